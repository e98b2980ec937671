"""Exception classes: one small class per kind of misuse.

Every message follows the pattern ``"Who: what is wrong (got X). How to fix."`` so that a
user reading a traceback learns which object complained, what it saw and what to change.
"""

from __future__ import annotations


class ConstrainedGradError(Exception):
    """Base class of every error raised on purpose by constrained_grad."""


class ConstraintSpecError(ConstrainedGradError, ValueError):
    """A constraint declaration is invalid (raised when it is built or bound to a model)."""


class InputValidationError(ConstrainedGradError, ValueError):
    """Data handed to a public function has the wrong shape, dtype, device or values."""


class GraphCutError(ConstrainedGradError, RuntimeError):
    """A derivative does not depend on the model parameters or on the inputs it should.

    Raised instead of silently training on zeros; the message names the likely cause
    (``.data``/``.detach()``, inputs tiled after the forward pass, no ``create_graph``).
    """


class CompiledModelError(ConstrainedGradError, TypeError):
    """Derivatives were asked through ``torch.compile``'d code, whose backward cannot be
    differentiated again. A compiled model passed directly is unwrapped to the module it
    compiles; this is raised for compiled code the library cannot see (a compiled submodule,
    a function calling a compiled module, outputs computed by one)."""


class EngineError(ConstrainedGradError, RuntimeError):
    """The derivative engine could not evaluate a request on any available path."""


class NonFiniteError(ConstrainedGradError, FloatingPointError):
    """A loss, violation, multiplier or parameter became NaN or infinite during training."""


class CheckpointError(ConstrainedGradError, RuntimeError):
    """A checkpoint cannot be written, read, or does not fit the current problem."""


class HistoryError(CheckpointError):
    """A history file (JSON or CSV) cannot be read: not a file, damaged, or not a history.

    A kind of :class:`CheckpointError` (a history is part of a run's saved state), so code
    catching that keeps working.
    """


class CertificationError(ConstrainedGradError, ValueError):
    """The exact certifier cannot encode the model (unsupported layer or shape)."""
