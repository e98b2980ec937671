"""Verification after training: sampled and adversarial worst-case search, exact MILP
certificates for ReLU networks, interval certificates for smooth ones, and
counterexample-guided constraint points."""

from constrained_grad.verify.counterexamples import Counterexamples
from constrained_grad.verify.interval import certify_interval, interval_derivative_bounds
from constrained_grad.verify.milp import (
    Certificate,
    CertificateSet,
    certify_derivative_sign,
    certify_monotonic,
)
from constrained_grad.verify.report import (
    ConstraintReport,
    Counterexample,
    MethodResult,
    VerificationReport,
)
from constrained_grad.verify.run import verify, violation_function
from constrained_grad.verify.search import SearchResult, adversarial_search, sample_search

__all__ = [
    "Certificate",
    "CertificateSet",
    "ConstraintReport",
    "Counterexample",
    "Counterexamples",
    "MethodResult",
    "SearchResult",
    "VerificationReport",
    "adversarial_search",
    "certify_derivative_sign",
    "certify_interval",
    "certify_monotonic",
    "interval_derivative_bounds",
    "sample_search",
    "verify",
    "violation_function",
]
