"""`ip2p generate` in two processes started by `accelerate launch`: every prompt is done by one process,
once, and the dataset is the one a single process writes. Tiny random SD base, in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ip2p.datasets.parquet_writer import ParquetLayoutWriter
from ip2p.headless.export import save_diffusers
from ip2p.prompts import PromptTriple, write_prompts

PROMPTS = 4
# `--multi_gpu` is what starts several processes (through torchrun) even on a machine without a GPU:
# `--cpu --num_processes 2` starts one process, without RANK / WORLD_SIZE.
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
ACCELERATE += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


@pytest.fixture(scope="module")
def command(tiny_base_model, tmp_path_factory) -> list[str]:
    """`generate` and its arguments, without --out: four prompts, two samples each, two steps at 32 px."""
    folder = tmp_path_factory.mktemp("multiprocess")
    base = save_diffusers(tiny_base_model, folder / "base")
    triples = [PromptTriple(f"a photo of cat {i}", "make it a dog", f"a photo of dog {i}") for i in range(PROMPTS)]
    prompts = write_prompts(folder / "prompts.jsonl", triples)
    args = ["generate", "--prompts", prompts, "--base", base, "--samples", 2, "--keep", 2, "--steps", 2]
    return [str(a) for a in [*args, "--size", 32, "--device", "cpu"]]


def run(launcher: list[str], args: list[str], tmp_path) -> subprocess.CompletedProcess:
    # HF_HOME: no accelerate config of the user's changes the launch; one thread a process, as on a shared CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def paper_files(root) -> dict[str, bytes]:
    """Every visible file of a paper-layout dataset, by relative path: images, metadata, done.json, seeds.json."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def parquet_rows(root) -> list[dict]:
    """Every row of a parquet dataset's shards, in key order (shard numbers depend on which process wrote first)."""
    rows = [row for shard in sorted(root.rglob("*.parquet")) for row in pq.read_table(shard).to_pylist()]
    return sorted(rows, key=lambda row: row["example_key"])


@pytest.mark.parametrize("layout", ["paper", "parquet"])
def test_two_processes_do_every_prompt_once_and_write_what_one_process_writes(command, layout, tmp_path):
    two = run(ACCELERATE, ["-m", "ip2p", *command, "--format", layout, "--out", str(tmp_path / "two")], tmp_path)
    for rank in (0, 1):  # 2 + 2 prompts done, none found done: each of the 4 prompts by one process
        assert f"(process {rank} of 2): 2 prompt(s) done (0 already done before)" in two.stderr
    run([sys.executable, "-m", "ip2p"], [*command, "--format", layout, "--out", str(tmp_path / "one")], tmp_path)

    if layout == "paper":
        one, both = paper_files(tmp_path / "one"), paper_files(tmp_path / "two")
        assert sorted(name for name in both if name.endswith("done.json")) == [
            f"{i:07d}/done.json" for i in range(PROMPTS)
        ]
        assert both["seeds.json"] == one["seeds.json"], "the last process to finish lists every pair"
        assert both == one, "the same pairs, pixels and metadata"
    else:
        assert set(ParquetLayoutWriter(tmp_path / "two").groups) == {f"{i:07d}" for i in range(PROMPTS)}
        assert parquet_rows(tmp_path / "two") == parquet_rows(tmp_path / "one")
