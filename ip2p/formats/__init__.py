"""Model files on disk, with torch and safetensors only (no diffusers: the ComfyUI nodes use it too).

Which format a path is and reading it safely (:mod:`.checkpoint`), key conversion between the
original and diffusers layouts in both directions (:mod:`.convert`), the offline CLIP tokenizer
(:mod:`.tokenizer`), model hashes (:mod:`.hashing`), atomic writes (:mod:`.atomic`) and the
derived-file cache (:mod:`.cache`).
"""
