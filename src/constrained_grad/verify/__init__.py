"""Verification after training: sampled and adversarial worst-case search, exact MILP
certificates for ReLU networks, interval certificates for smooth ones, and
counterexample-guided constraint points."""

from constrained_grad.verify.counterexamples import Counterexamples
from constrained_grad.verify.interval import certify_interval, interval_derivative_bounds
from constrained_grad.verify.local import verify_local
from constrained_grad.verify.milp import (
    Certificate,
    CertificateSet,
    certify_derivative_sign,
    certify_monotonic,
)
from constrained_grad.verify.report import (
    ConstraintReport,
    Counterexample,
    LocalCheck,
    LocalReport,
    MethodResult,
    RowVerdict,
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
    "LocalCheck",
    "LocalReport",
    "MethodResult",
    "RowVerdict",
    "SearchResult",
    "VerificationReport",
    "adversarial_search",
    "certify_derivative_sign",
    "certify_interval",
    "certify_monotonic",
    "interval_derivative_bounds",
    "sample_search",
    "verify",
    "verify_local",
    "violation_function",
]
