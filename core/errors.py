"""The error tree. Every error says what went wrong and what to do about it.

``LoopfreeError``
  ``UserError``          bad input or configuration: fix the input, retrying will not help
    ``InvalidJob``        one job's fields are invalid
    ``ModelNotFound``     weights could not be found or downloaded
    ``InvalidSettings``   a ``LOOPFREE_*`` variable has a value the settings refuse
  ``RetryableError``     a dependency is unavailable for now: retry with backoff
    ``DatabaseUnavailable``, ``BrokerUnavailable``, ``StoreUnavailable``

A job that cannot succeed (it crashes the sampler every time) is no exception of its own: it is
recorded ``failed`` with its reason once its attempts are spent (``worker.recording``).
"""

from __future__ import annotations


class LoopfreeError(Exception):
    """Base of every error this project raises on purpose."""


class UserError(LoopfreeError):
    """The input or the configuration is wrong; the message names what and how to fix it."""


class InvalidJob(UserError):
    """A job's fields are invalid (empty prompt, bad size, seed out of range, ...)."""


class InvalidSettings(UserError):
    """A ``LOOPFREE_*`` environment variable (or .env entry) holds a value the settings refuse."""


class ModelNotFound(UserError):
    """Model weights could not be loaded from the given hub id or directory."""


class RetryableError(LoopfreeError):
    """A dependency is unavailable right now; the same call may succeed later."""


class DatabaseUnavailable(RetryableError):
    """The SQL database did not answer."""


class BrokerUnavailable(RetryableError):
    """The message broker did not answer."""


class StoreUnavailable(RetryableError):
    """The object store did not answer or refused the request."""
