"""Measures of edit quality: pure maths on embeddings and pixels (:mod:`.metrics`), and the models that embed
(:mod:`.dino` beside :class:`ip2p.clip_filter.ClipScorer`). ``ip2p eval`` computes them; docs/metrics.md
says what each one means, its formula and its source."""
