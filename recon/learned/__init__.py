"""Reconstructions completed or unrolled by a trained network: unrolling (``unrolled``), RISING
(``rising``) and the limited-angle prior (``limited_angle``). The networks are in ``priors.nets``."""
