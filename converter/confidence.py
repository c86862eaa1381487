"""Confidence bounds on an accuracy drop measured on a finite set of images.

Why: the scheduler promises "at most N pp drop", and a point estimate on a few hundred images
cannot keep that promise (1 pp is 3 images of 300), least of all for the configuration that was
picked *because* its estimate was small. The profile therefore stores, next to each drop, a
one-sided upper bound at CONFIDENCE, and the scheduler uses the bound by default.

Two cases, both with closed forms (deterministic, cheap, testable):

- Labelled images: drop = top-1(float model) - top-1(config), measured on the *same* images, so
  the two accuracies are paired. Newcombe's hybrid score interval for a difference of paired
  proportions (Newcombe 1998, "Improved confidence intervals for the difference between binomial
  proportions based on paired data", method 10) combines a Wilson interval for each accuracy with
  the correlation between them; it keeps near-nominal coverage where the Wald interval fails
  (few disagreements, accuracies near 1).
- Unlabelled images: the drop is the disagreement rate with the float model; its bound is the
  Wilson score bound of that rate.

Each bound is one-sided at CONFIDENCE; the pair (lower, upper) is a two-sided interval at
2 * CONFIDENCE - 1 (90 % for the default 95 %).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95


def z_score(confidence: float = CONFIDENCE) -> float:
    """The standard normal quantile of a one-sided bound at `confidence`."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"Expected 0.5 < confidence < 1. Received: confidence={confidence}")
    return NormalDist().inv_cdf(confidence)


@dataclass(frozen=True)
class DropInterval:
    """A drop in percentage points with its one-sided bounds at `confidence`."""

    point_pp: float
    lower_pp: float
    upper_pp: float
    images: int
    method: str
    confidence: float = CONFIDENCE

    def to_json(self) -> dict:
        return {"drop_pp": self.point_pp, "drop_lower_pp": self.lower_pp,
                "drop_upper_pp": self.upper_pp}


def wilson_bounds(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score bounds (each one-sided at `confidence`) of a binomial proportion."""
    if n <= 0:
        raise ValueError(f"Expected n > 0. Received: n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"Expected 0 <= successes <= n. Received: successes={successes}, n={n}")
    z = z_score(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_counts(reference_correct: np.ndarray, candidate_correct: np.ndarray) -> tuple[int, int, int, int]:
    """(both right, only the reference right, only the candidate right, both wrong)."""
    r = np.asarray(reference_correct, dtype=bool)
    c = np.asarray(candidate_correct, dtype=bool)
    if r.shape != c.shape or r.ndim != 1:
        raise ValueError(f"Expected two 1-D arrays of the same length. Received: {r.shape}, {c.shape}")
    return (int(np.sum(r & c)), int(np.sum(r & ~c)), int(np.sum(~r & c)), int(np.sum(~r & ~c)))


def paired_drop(a: int, b: int, c: int, d: int, confidence: float = CONFIDENCE) -> DropInterval:
    """Drop (reference accuracy minus candidate accuracy) from the paired counts `a` (both right),
    `b` (only the reference right), `c` (only the candidate right), `d` (both wrong), with
    Newcombe's hybrid score bounds."""
    n = a + b + c + d
    if min(a, b, c, d) < 0 or n == 0:
        raise ValueError(f"Expected non-negative counts with a positive total. Received: {(a, b, c, d)}")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_bounds(a + b, n, confidence)
    l2, u2 = wilson_bounds(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    theta = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return DropInterval(point_pp=100 * theta, lower_pp=100 * max(-1.0, theta - below),
                        upper_pp=100 * min(1.0, theta + above), images=n,
                        method="newcombe-paired-score", confidence=confidence)


def disagreement_drop(disagreements: int, n: int, confidence: float = CONFIDENCE) -> DropInterval:
    """Drop measured without labels: the rate of answers that differ from the float model's."""
    lo, hi = wilson_bounds(disagreements, n, confidence)
    return DropInterval(point_pp=100 * disagreements / n, lower_pp=100 * lo, upper_pp=100 * hi,
                        images=n, method="wilson-disagreement", confidence=confidence)


def drop_interval(reference_pred: np.ndarray, candidate_pred: np.ndarray, labels: np.ndarray | None,
                  confidence: float = CONFIDENCE) -> DropInterval:
    """The drop of `candidate_pred` against `reference_pred` on the same images: paired top-1
    with labels, disagreement without."""
    reference_pred = np.asarray(reference_pred)
    candidate_pred = np.asarray(candidate_pred)
    if labels is None:
        return disagreement_drop(int(np.sum(reference_pred != candidate_pred)), len(reference_pred),
                                 confidence)
    labels = np.asarray(labels)
    return paired_drop(*paired_counts(reference_pred == labels, candidate_pred == labels),
                       confidence=confidence)
