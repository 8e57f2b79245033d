"""The training loop: setup, train, save, load as separate small steps (one :class:`Trainer`).

Per optimizer step, for each of ``gradient_accumulation_steps`` micro-batches: the edited image is
VAE-encoded (posterior sample × scaling factor: the diffusion target's latent), the input image to
its posterior mode, unscaled (SD 1.5 InstructPix2Pix's image-latent convention), the instruction by
the frozen text encoder; each sample draws its dropout, timestep and noise from its own generator
(:mod:`ip2p.training`); the UNet predicts the noise from ``[noisy latent, image latent]`` and the
text, and the loss is the MSE to the true noise (or velocity, for a v-prediction schedule),
optionally min-SNR-γ weighted per sample (``optim.snr_gamma``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ip2p.errors import IP2PError
from ip2p.training import apply_dropout, diffusion_draws, dropout_masks, min_snr_weights

from . import checkpoints as ckpt
from . import lora, safe_resume
from .config import TrainConfig, differences, read_saved_config, to_yaml
from .data import PairStream, make_loader, open_training_data, tokenize
from .memory import ParkedEncoders, peak_memory, trim_heap_during_backward
from .model import (
    EMA,
    encode_pairs,
    freeze,
    frozen_encoders_on,
    load_base,
    make_optimizer,
    model_for_export,
    trained_state,
)
from .validation import log_grid, log_scalars, make_evaluator, make_validator, means, open_tensorboard

logger = logging.getLogger("ip2p.train")

EXPORT = "export"
ADAPTER = "lora.safetensors"  # a LoRA run's export


def check_run_folder(config: TrainConfig, resume: str | None) -> Path | None:
    """The checkpoint to resume from (None: a fresh start), after refusing a folder that belongs to another run.

    Nothing is written here, so a refused start leaves the folder as it was.
    """
    out = Path(config.output_dir).expanduser()
    saved = out / ckpt.CONFIG
    if resume:
        checkpoint = ckpt.resolve_resume(resume, out)
        safe_resume.check_checkpoint(checkpoint)  # every file read as data first: nothing in a checkpoint runs
        theirs = read_saved_config(checkpoint / ckpt.CONFIG)
        changed = differences(theirs, config)
        if changed:
            raise IP2PError(
                f"Cannot resume {checkpoint} with different settings ({'; '.join(changed)}). Resume with the run's "
                f"own config (only output_dir, max_steps, save_every, checkpoints.*, validation.*, export.*, "
                f"data.num_workers and data.cache_dir may change), or start a new run in a new output_dir."
            )
        if theirs.optim.lr_schedule != "constant" and theirs.max_steps != config.max_steps:
            raise IP2PError(
                f"{checkpoint}'s run decays its learning rate ({theirs.optim.lr_schedule}) to zero at max_steps="
                f"{theirs.max_steps}; resuming with max_steps={config.max_steps} would bend that schedule. Resume "
                f"with max_steps={theirs.max_steps}, or start a new run in a new output_dir."
            )
        return checkpoint
    if saved.is_file():
        theirs = read_saved_config(saved)
        changed = differences(theirs, config)
        if changed:
            raise IP2PError(
                f"{out} holds another run (its config.yaml differs: {'; '.join(changed)}). Choose a new output_dir, "
                f"or resume that run with its own settings and --resume latest."
            )
        if ckpt.complete_checkpoints(out):
            raise IP2PError(
                f"{out} already holds checkpoints of this run. Continue it with --resume latest, or choose a new "
                f"output_dir to start over."
            )
    elif (out / ckpt.CHECKPOINTS).exists() or (out / ckpt.METRICS).exists():
        raise IP2PError(
            f"{out} holds checkpoints or metrics but no config.yaml: it is not a run folder this trainer can reuse. "
            f"Choose a new output_dir."
        )
    return None


def process_group_kwargs() -> list:
    """Accelerator settings for the process group: gloo when DeepSpeed is launched on CPU processes.

    There accelerate names no backend (it knows GPUs and other accelerators only), so each process would
    train alone; DeepSpeed itself runs on CPUs (its ZeRO sharding is tested so, ``scripts/test.sh deepspeed``).
    """
    from accelerate.utils import InitProcessGroupKwargs

    launched = "LOCAL_RANK" in os.environ and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if not launched:
        return []
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError:  # accelerate says so next, with the install command
        return []
    return [InitProcessGroupKwargs(backend="gloo")] if get_accelerator().device_name() == "cpu" else []


def check_processes(accelerator) -> None:
    """Refuse processes that a launcher started together but that did not join one process group.

    ``accelerate launch --multi_gpu`` on a machine without GPUs starts N processes that each train
    alone (accelerate falls back to one process) and write the same run folder; they must be told
    to use the CPU's gloo backend.
    """
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and int(launched) != accelerator.num_processes:
        raise IP2PError(
            f"The launcher started {launched} processes but accelerate joined {accelerator.num_processes} "
            f"(distributed type {accelerator.distributed_type}). Without GPUs, set ACCELERATE_USE_CPU=1: "
            f"ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} -m ip2p_train ..."
        )


def configure_deepspeed(accelerator, config: TrainConfig) -> None:
    """Give DeepSpeed (``accelerate launch`` with a DeepSpeed config) the trainer's batch size, accumulation and
    clipping: the trainer keeps its own data loader, so DeepSpeed cannot read them, and it clips by itself."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ours = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_clipping": config.optim.max_grad_norm or 0.0,
    }
    settings = plugin.deepspeed_config
    for key, value in ours.items():
        theirs = settings.get(key, "auto")
        if theirs == "auto":
            settings[key] = value
        elif theirs != value:
            raise IP2PError(
                f"The DeepSpeed config sets {key}={theirs} but the trainer's config gives {value}. Make them equal "
                f"(or write {key}: auto in the DeepSpeed config)."
            )


def check_sharding(accelerator, config: TrainConfig) -> None:
    """Refuse the sharded set-ups the trainer cannot train correctly, naming the one to use instead.

    FSDP2 (``fsdp_version: 2``) is supported: the EMA follows the parameter shards, and checkpoints, validation
    and export gather whole tensors. FSDP1 flattens parameters into one buffer the EMA cannot follow, and
    DeepSpeed ZeRO-3 partitions the weights outside torch's view, so the EMA and the export would read empty
    tensors; LoRA's adapters are small enough that plain data parallelism is the better tool.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    fsdp_config = "train/configs/accelerate/fsdp.yaml"
    if kind == DistributedType.FSDP:
        if accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise IP2PError(
                f"FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config ({fsdp_config})."
            )
        if config.lora.rank:
            raise IP2PError(
                "LoRA under FSDP is not supported: the adapters are small, so shard nothing. Launch with "
                "train/configs/accelerate/multi_gpu.yaml instead."
            )
        logger.info("FSDP: the UNet is sharded over %d processes", accelerator.num_processes)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        raise IP2PError(
            f"DeepSpeed ZeRO stage 3 is not supported (it partitions the weights the EMA and the export read). "
            f"Use ZeRO-2 (train/configs/accelerate/deepspeed_zero2.yaml) or FSDP, which shards the weights too "
            f"({fsdp_config})."
        )


def lr_factor(schedule: str, warmup_steps: int, max_steps: int):
    """The learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor


class Trainer:
    """One training run. ``dataset`` (a sequence of EditExample) replaces ``data.path`` (tests, notebooks)."""

    def __init__(self, config: TrainConfig, resume: str | None = None, dataset: Sequence | None = None) -> None:
        self.config = config
        self.resume = resume
        self.dataset = dataset
        self.out = Path(config.output_dir).expanduser()
        self.step = 0

    # ---------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        c = self.config
        if self.dataset is None and not c.data.path:
            raise IP2PError("data.path is not set: give the dataset to train on, e.g. data.path=/data/ip2p.")
        self.checkpoint = check_run_folder(c, self.resume)
        self.accelerator = acc = Accelerator(
            mixed_precision=c.mixed_precision,
            gradient_accumulation_steps=c.gradient_accumulation_steps,
            kwargs_handlers=process_group_kwargs(),
        )
        check_processes(acc)
        set_seed(c.seed)
        dataset = (
            self.dataset if self.dataset is not None else open_training_data(c.data.path, c.data.columns, c.data.split)
        )
        self.validator = make_validator(c, dataset)  # reads its images now: a bad one stops the run before it writes
        self.evaluator = make_evaluator(c, dataset, main=acc.is_main_process)  # its examples and folders too
        self.evaluated: tuple[int, dict[str, float]] | None = None  # the latest held-out means: (step, {metric: mean})

        model = load_base(c.model.base, c.seed, widen=not c.lora.rank)
        self.model = model
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        freeze(model.vae)
        freeze(model.text_encoder)
        # The frozen encoders run on the accelerator in the mixed-precision dtype; `model` keeps its float32
        # CPU weights for validation and export. With the latent cache they leave the accelerator once it is filled.
        self.encoder = frozen_encoders_on(model, acc.device, weight_dtype)
        unet = model.unet.to(acc.device)
        unet.requires_grad_(True).train()
        self.base_conv_in = None
        if c.lora.rank:
            if c.lora.conv_in == "full":  # the base's conv_in, before any resume: the adapter stores the difference
                self.base_conv_in = tuple(
                    p.detach().float().cpu().clone() for p in (unet.conv_in.weight, unet.conv_in.bias)
                )
            wrapped = lora.add_lora(unet, c.lora.rank, c.lora.alpha, c.lora.conv_in)
            logger.info("LoRA rank %d on %d layers (conv_in: %s)", c.lora.rank, len(wrapped), c.lora.conv_in)
        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        # The optimizer and the EMA hold the trainable parameters only (a LoRA run: the adapters).
        trainable = [p for p in unet.parameters() if p.requires_grad]
        if acc.device.type == "cpu":
            trim_heap_during_backward(sum(p.numel() for p in unet.parameters()), trainable)
        optimizer = make_optimizer(trainable, c.optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(c.optim.lr_schedule, c.optim.warmup_steps, c.max_steps)
        )
        check_sharding(acc, c)
        configure_deepspeed(acc, c)
        # The LR schedule is stepped once per optimizer step by us, not by accelerate (which steps it once
        # per process), so warm-up counts optimizer steps whatever the process count.
        self.unet, self.optimizer = acc.prepare(unet, optimizer)
        # Made after prepare, which shards the parameters under FSDP: the shadows then take the same layout.
        self.ema = EMA(acc.unwrap_model(self.unet), c.ema.decay, c.ema.warmup) if c.ema.enabled else None
        if c.lora.rank:
            lora.checkpoint_trainable_only(acc)
        self.lr_scheduler = scheduler
        acc.register_for_checkpointing(scheduler)
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.weight_dtype = weight_dtype
        with torch.no_grad():
            ids = tokenize(model.tokenizer, [""]).to(acc.device)
            self.empty_embedding = self.encoder.text_encoder(ids)[0]

        if self.checkpoint is not None:
            self.load(self.checkpoint)
        self.stream = self._stream(dataset)
        self.parked = None
        if c.data.cache:  # training reads the cache: the encoders are needed again only for validation and export
            self.encoder = None
            self.parked = ParkedEncoders(model)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.loader = make_loader(
            self.stream,
            batch_size=c.batch_size,
            process_index=acc.process_index,
            num_processes=acc.num_processes,
            start_micro=self.step * c.gradient_accumulation_steps,
            num_workers=c.data.num_workers,
        )
        self._start_run_folder()
        self.tensorboard = open_tensorboard(self.out, self.step) if acc.is_main_process else None

    def _stream(self, dataset: Sequence):
        """The training samples: decoded and encoded per step, or from the latent cache (``data.cache``)."""
        c, acc = self.config, self.accelerator
        if not c.data.cache:
            return PairStream(
                dataset, self.model.tokenizer, resolution=c.data.resolution, flip=c.data.flip, seed=c.seed
            )
        from .cache import encode_dataset

        folder = self._cache_folder(dataset)
        encode = functools.partial(
            encode_dataset, dataset, self.encoder, resolution=c.data.resolution, flip=c.data.flip, seed=c.seed,
            device=acc.device, dtype=self.weight_dtype, progress=acc.is_local_main_process, folder=folder,
        )  # fmt: skip
        if folder is None:  # a dataset given in memory: every process encodes its own copy
            return encode()
        if acc.is_main_process:  # the main process fills the cache, the others then read it
            stream = encode()
            acc.wait_for_everyone()
            return stream
        acc.wait_for_everyone()
        return encode()

    def _cache_folder(self, dataset: Sequence) -> Path | None:
        """Where this dataset's latent cache lives for this model and these settings (None: in memory only)."""
        from ip2p.formats.cache import cache_dir

        from .cache import cache_key, dataset_fingerprint

        c = self.config
        if self.dataset is not None:
            return None
        data = {
            "files": dataset_fingerprint(c.data.path),
            "columns": c.data.columns,
            "split": c.data.split,
            "examples": len(dataset),
        }
        root = Path(c.data.cache_dir).expanduser() if c.data.cache_dir else cache_dir() / "latents"
        key = cache_key(self.model, data, resolution=c.data.resolution, flip=c.data.flip, dtype=self.weight_dtype)
        return root / key

    def _start_run_folder(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.write_text_atomic(self.out / ckpt.CONFIG, to_yaml(self.config))
            ckpt.truncate_metrics(self.out, self.step)  # a fresh start keeps none; a resume drops the later steps
            logger.info(
                "Training %s -> %s: %d processes x batch %d x %d accumulation steps, from step %d to %d",
                self.config.model.base,
                self.out,
                acc.num_processes,
                self.config.batch_size,
                self.config.gradient_accumulation_steps,
                self.step,
                self.config.max_steps,
            )
        acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------- one step

    @torch.no_grad()
    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of pixels and token ids -> (edited posterior mean, its std, image latent, text embedding);
        a batch from the latent cache holds them already."""
        device, dtype, model = self.accelerator.device, self.weight_dtype, self.encoder
        if "edited_mean" in batch:
            return tuple(batch[k].to(device, dtype) for k in ("edited_mean", "edited_std", "image_latent", "text"))
        mean, std, image_latent = encode_pairs(
            model, batch["edited"].to(device, dtype=dtype), batch["input"].to(device, dtype=dtype)
        )
        return mean, std, image_latent, model.text_encoder(batch["input_ids"].to(device))[0]

    def loss(self, batch: dict) -> torch.Tensor:
        """The training loss of one micro-batch (mean over its samples)."""
        c, acc = self.config, self.accelerator
        with torch.no_grad():
            mean, std, image_latents, text = self.encode(batch)
            draws = diffusion_draws(
                c.seed,
                batch["position"].tolist(),
                tuple(mean.shape[1:]),
                self.noise_scheduler.config.num_train_timesteps,
            )
            latents = (mean + std * draws.posterior.to(acc.device, dtype=mean.dtype)) * self.model.latent_scaling_factor
            masks = dropout_masks(draws.u, c.dropout.text, c.dropout.image, c.dropout.both)
            text, image_latents = apply_dropout(masks, text, self.empty_embedding.to(text.dtype), image_latents)
            noise = draws.noise.to(acc.device, dtype=latents.dtype)
            timesteps = draws.timesteps.to(acc.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            if self.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
        model_input = torch.cat([noisy, image_latents], dim=1)
        prediction = self.unet(model_input, timesteps, text, return_dict=False)[0]
        if c.optim.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean")
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = min_snr_weights(
            self.noise_scheduler.alphas_cumprod, timesteps, c.optim.snr_gamma, self.prediction_type
        )
        return (per_sample * weights).mean()

    # ----------------------------------------------------------------------------------------- train

    def train(self) -> Path:
        """Train from the current step to ``max_steps``, saving every ``save_every`` steps and at the end."""
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        batches = iter(self.loader)
        global_batch = c.batch_size * acc.num_processes * c.gradient_accumulation_steps
        bar = tqdm(
            total=c.max_steps, initial=self.step, desc="train", unit="step", disable=not acc.is_local_main_process
        )
        try:
            while self.step < c.max_steps:
                start = time.perf_counter()
                losses = []
                for _ in range(c.gradient_accumulation_steps):
                    batch = next(batches)
                    with acc.accumulate(self.unet):
                        loss = self.loss(batch)
                        acc.backward(loss)
                        if acc.sync_gradients and c.optim.max_grad_norm is not None:
                            acc.clip_grad_norm_(self.unet.parameters(), c.optim.max_grad_norm)
                        self.optimizer.step()  # accelerate skips it until the last micro-batch
                        self.optimizer.zero_grad(set_to_none=True)
                    losses.append(loss.detach())
                if not acc.sync_gradients:  # pragma: no cover - accelerate keeps the count aligned with ours
                    raise RuntimeError("gradient accumulation out of step with the trainer's own count")
                lr = self.lr_scheduler.get_last_lr()[0]  # the rate this step used
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.update(acc.unwrap_model(self.unet))
                self.step += 1
                step_loss = float(acc.gather(torch.stack(losses).mean()[None]).mean())
                if not math.isfinite(step_loss):
                    raise IP2PError(
                        f"The loss became {step_loss} at step {self.step}. Lower optim.lr, or use "
                        f"mixed_precision=bf16 instead of fp16."
                    )
                elapsed = time.perf_counter() - start
                record = {
                    "step": self.step,
                    "loss": step_loss,
                    "lr": lr,
                    "samples_per_s": global_batch / elapsed if elapsed > 0 else None,
                    "samples": self.step * global_batch,
                    **peak_memory(acc.device),
                }
                self._log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", samples_per_s=f"{record['samples_per_s']:.1f}")
                if self.validator is not None and self.validator.due(self.step, c.max_steps):
                    self.validate()  # before the save, so the checkpoint records its held-out scores
                if self.step % c.save_every == 0 or self.step == c.max_steps:
                    self.save()
            if acc.is_main_process:
                memory = " ".join(f"{key}={value}" for key, value in peak_memory(acc.device).items())
                logger.info("Trained to step %d; this process's peak memory: %s", self.step, memory)
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self.out

    def validate(self) -> None:
        """This step's grid and held-out scores (written by the main process; the others wait)."""
        acc = self.accelerator
        state = self.trained_state()  # every process: under FSDP it gathers the shards
        if acc.is_main_process:  # a float32 CPU copy with the EMA weights: the UNet trained is untouched
            with self.encoders_loaded():
                exported = model_for_export(self.model, acc.unwrap_model(self.unet), state)
                path, picture = self.validator.run(exported, self.step, self.out)
                entry = self.evaluator.run(exported, self.step) if self.evaluator is not None else None
            logger.info("Validation grid of step %d: %s", self.step, path)
            if self.tensorboard is not None:
                log_grid(self.tensorboard, picture, self.step)
            if entry is not None:
                self.evaluated = (self.step, means(entry))
                self._log({"step": self.step, "eval": entry})
                logger.info(
                    "Held-out scores of step %d: %s", self.step,
                    ", ".join(f"{name} {value:.4g}" for name, value in self.evaluated[1].items()) or "none",
                )  # fmt: skip
        acc.wait_for_everyone()

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / ckpt.METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.tensorboard is not None:
                log_scalars(self.tensorboard, record)

    # ------------------------------------------------------------------------------------ save, load

    def save(self) -> Path:
        """A complete checkpoint of this step, older ones pruned, and the export rewritten."""
        acc = self.accelerator
        path = ckpt.step_dir(self.out, self.step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.prepare_step_dir(self.out, self.step)
        acc.wait_for_everyone()
        acc.save_state(str(path))
        acc.wait_for_everyone()  # every process's own files (its RNG state) are written before `complete` is
        state = self.trained_state()  # every process: under FSDP it gathers the shards
        if acc.is_main_process:
            base_hash = self.model.model_hash if self.config.lora.rank else None
            scores = self.evaluated[1] if self.evaluated is not None and self.evaluated[0] == self.step else None
            ckpt.finish(path, self.step, to_yaml(self.config), acc.num_processes, base_hash, scores)
            keep_best = self.config.checkpoints.keep_best
            ckpt.prune(self.out, self.config.checkpoints.total_limit, keep_best)
            if keep_best and (best := ckpt.best_checkpoint(self.out, keep_best)) is not None:
                logger.info("Best checkpoint by %s: %s (%.4g)", keep_best, best[1], best[2])
            with self.encoders_loaded():
                self.export(state)
            logger.info("Saved %s and %s", path, self.out / EXPORT)
        acc.wait_for_everyone()
        return path

    def trained_state(self) -> dict[str, torch.Tensor] | None:
        """The UNet's whole float32 CPU state with the EMA's weights on the main process, None on the others.
        Every process calls it: under FSDP they gather the shards together."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if not acc.is_main_process and acc.distributed_type != DistributedType.FSDP:
            return None
        state = trained_state(acc.unwrap_model(self.unet), self.ema)
        return state if acc.is_main_process else None

    def encoders_loaded(self):
        """The model's VAE and text encoder in memory for the block (parked while training reads the cache)."""
        return self.parked.loaded() if self.parked is not None else contextlib.nullcontext()

    def load(self, checkpoint: Path) -> None:
        processes, now = ckpt.read_processes(checkpoint), self.accelerator.num_processes
        if processes is not None and processes != now:
            # The data stream continues at step × global batch: another process count reads other samples.
            raise IP2PError(
                f"{checkpoint} was written by {processes} processes; this run has {now}. Resume with "
                f"{processes} processes and the same batch_size, or start a new run in a new output_dir."
            )
        if self.config.lora.rank:
            self._check_lora_base(checkpoint)
        try:
            with safe_resume.weights_only_loads():
                if self.config.lora.rank:  # the adapters only: the hook checked them
                    self.accelerator.load_state(str(checkpoint), strict=False)
                else:
                    self.accelerator.load_state(str(checkpoint))
        except pickle.UnpicklingError as exc:  # a file changed after the check: still refused, still not run
            raise IP2PError(
                f"{checkpoint} holds a file that is not tensors and plain data ({' '.join(str(exc).split())[:200]}). "
                f"Nothing in it was run: resume from a checkpoint you trust, or start a new run."
            ) from None
        self.step = ckpt.read_step(checkpoint)
        logger.info("Resuming from %s (step %d)", checkpoint, self.step)

    def _check_lora_base(self, checkpoint: Path) -> None:
        """A LoRA checkpoint holds the adapters only: they resume on the very base they were trained on."""
        saved = ckpt.read_base_model_hash(checkpoint)
        if saved is not None and saved != self.model.model_hash:
            raise IP2PError(
                f"{checkpoint} holds LoRA adapters trained on a base with hash {saved}, but model.base="
                f"{self.config.model.base} now has hash {self.model.model_hash}. Put the original base back "
                f"at that path, or start a new run in a new output_dir."
            )

    def export(self, state: dict[str, torch.Tensor]) -> None:
        """``export/diffusers/`` and ``export/model.safetensors`` holding ``state`` (:meth:`trained_state`), each
        atomically; a LoRA run writes only ``export/lora.safetensors``, the adapter in ComfyUI's format."""
        from ip2p.headless.export import save_diffusers, save_single_file

        if self.config.lora.rank:
            self.export_adapter(state)
            return
        exported = model_for_export(self.model, self.accelerator.unwrap_model(self.unet), state)
        save_diffusers(exported, self.out / EXPORT / "diffusers")
        save_single_file(
            exported,
            self.out / EXPORT / "model.safetensors",
            dtype=torch.float16 if self.config.export.fp16 else None,
        )

    def export_adapter(self, state: dict[str, torch.Tensor]) -> Path:
        c = self.config
        plain, adapters = lora.split_state(self.accelerator.unwrap_model(self.unet), state)
        conv_in_diff = None
        if self.base_conv_in is not None:
            conv_in_diff = (
                plain["conv_in.weight"] - self.base_conv_in[0],
                plain["conv_in.bias"] - self.base_conv_in[1],
            )
        metadata = {
            "rank": str(c.lora.rank),
            "alpha": str(c.lora.alpha if c.lora.alpha is not None else c.lora.rank),
            "conv_in": c.lora.conv_in,
            "base_model": str(c.model.base),
            "base_model_hash": self.model.model_hash,
            "step": str(self.step),
            "ss_network_dim": str(c.lora.rank),  # kohya's names, which LoRA tools read
            "ss_network_alpha": str(c.lora.alpha if c.lora.alpha is not None else c.lora.rank),
        }
        return lora.save_adapter(self.out / EXPORT / ADAPTER, lora.adapter_tensors(adapters, conv_in_diff), metadata)


def train(config: TrainConfig, resume: str | None = None, dataset: Sequence | None = None) -> Path:
    """Set up and run one training run; returns the run folder."""
    trainer = Trainer(config, resume=resume, dataset=dataset)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        if getattr(trainer, "accelerator", None) is not None:  # a failed setup of several processes ends cleanly too
            trainer.accelerator.end_training()
