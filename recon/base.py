"""Solver base class, results and stopping."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from operators.base import trusted_values
from recon.problem import Problem

__all__ = ["Result", "Solver", "Callback"]

Callback = Callable[[int, Any], "bool | None"]

#: on CUDA, ``Solver.run`` reads the stopping rule back from the device every this many iterations
CUDA_CHECK_EVERY = 10


@dataclass
class Result:
    """What a solver returns.

    Attributes:
        x: the reconstruction ``(B, ...)``.
        state: the final solver state.
        n_iter: iterations run.
        converged: True when the stopping rule fired before ``max_iter``.
        history: per-iteration records, e.g. ``{"relative_change": [...], "objective": [...]}``.
    """

    x: torch.Tensor
    state: Any
    n_iter: int
    converged: bool
    history: dict[str, list[float]] = field(default_factory=dict)


class Solver:
    """Base class: ``init`` builds a state, ``step`` advances it, ``run`` loops.

    Subclasses implement ``init(problem, x0) -> State`` and
    ``step(problem, state) -> State`` and report convergence through
    ``converged(state) -> bool``. ``run`` records ``state.relative_change`` (and
    the objective every ``objective_every`` iterations when > 0) in the history
    and stops on convergence, on ``max_iter``, or when a callback returns True.
    """

    def __init__(self, max_iter: int = 100, tol: float = 0.0, objective_every: int = 0,
                 progress: bool = False) -> None:
        if int(max_iter) < 1:
            raise ValueError(f"max_iter: expected a positive integer, got {max_iter}")
        if tol < 0:
            raise ValueError(f"tol: expected a number >= 0, got {tol}")
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.objective_every, self.progress = int(objective_every), progress

    def init(self, problem: Problem, x0: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, problem: Problem, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def converged(self, state) -> bool:
        return self.tol > 0 and float(state.relative_change.max()) < self.tol

    def iterate(self, problem: Problem, x0: torch.Tensor) -> Iterator:
        """Yield the state after each iteration (forever; the caller stops).

        Gradients are off inside ``init`` and ``step`` only, never across a ``yield``: a
        generator suspended inside ``torch.no_grad()`` would leave autograd off in the caller.
        ``step`` runs inside ``operators.trusted_values()``: ``init`` checked the inputs, and the
        operators' NaN checks would cost a device-to-host copy per call on CUDA.
        """
        with torch.no_grad():
            state = self.init(problem, x0)
        while True:
            with torch.no_grad(), trusted_values():
                state = self.step(problem, state)
            yield state

    def run(self, problem: Problem, x0: torch.Tensor, callbacks: Sequence[Callback] = ()) -> Result:
        """Iterate until convergence, ``max_iter`` or a callback returning True.

        On CUDA the loop reads nothing back from the device between checks: the per-iteration
        relative changes stay on the device until the end, and the stopping rule (and the progress
        bar) look every ``CUDA_CHECK_EVERY`` iterations, so a run may go up to that many iterations
        past the one where ``tol`` was first met. On CPU both happen every iteration.
        """
        changes: list[torch.Tensor] = []
        history: dict[str, list[float]] = {}
        if self.objective_every > 0:
            history["objective"] = []
        bar = _progress_bar(self.max_iter, type(self).__name__) if self.progress else None
        converged, n, state = False, 0, None
        every = 1
        for n, state in enumerate(self.iterate(problem, x0), start=1):
            if n == 1:
                every = CUDA_CHECK_EVERY if state.x.is_cuda else 1
            changes.append(state.relative_change.max())
            if self.objective_every > 0 and (n % self.objective_every == 0 or n == 1):
                history["objective"].append(float(problem.objective(state.x).sum()))
            look = n % every == 0 or n >= self.max_iter
            if bar is not None:
                bar.update(1)
                if look:
                    bar.set_postfix(rel_change=f"{float(changes[-1]):.2e}", refresh=False)
            converged = look and self.converged(state)
            stop = any(bool(cb(n, state)) for cb in callbacks)
            if converged or stop or n >= self.max_iter:
                break
        if bar is not None:
            bar.close()
        history = {"relative_change": torch.stack(changes).tolist() if changes else [], **history}
        return Result(state.x, state, n, converged, history)


def _progress_bar(total: int, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="it", leave=False, dynamic_ncols=True)


def relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``||new - old|| / max(||old||, tiny)`` per batch item, shape ``(B,)``."""
    num = torch.linalg.vector_norm((new - old).flatten(1), dim=1)
    den = torch.linalg.vector_norm(old.flatten(1), dim=1).clamp_min(1e-30)
    return num / den
