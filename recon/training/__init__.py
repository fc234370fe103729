"""Training learned parts: the shared trainer (``trainer``), its configuration (``train_config``) and
resumable checkpoints (``checkpoint``); ``recon train`` (``apps``) drives them."""
