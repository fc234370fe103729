"""Choosing the regularisation weight: the rule (``lambda_rule``), the discrepancy principle
(``discrepancy``, ``lam="auto"``) and cross-validation over the views (``cross_validation``, TV's
default on 2D CT)."""
