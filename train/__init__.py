"""The InstructPix2Pix trainer (import name ``ip2p_train``): config, data pipeline, loop, checkpoints."""
