"""Measures of edit quality, one room: pure maths on embeddings and pixels (:mod:`.metrics`), every metric of
a batch of edits in one call (:mod:`.scoring`, what ``ip2p eval`` and the Evaluate node use), and the models
that embed (:mod:`.dino` beside :class:`ip2p.clip_filter.ClipScorer`). No diffusers, no ComfyUI here;
docs/metrics.md says what each metric means, its formula and its source."""
