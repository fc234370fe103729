"""Solvers with a diffusion (score) prior: RED-Diff, DiffPIR/DPIR, DPS, score-based predictor-corrector
sampling, and the posterior summaries of the samplers; ``diffusion_recon`` runs them for ``reconstruct``.
The prior and its noise schedules are ``priors.diffusion``."""
