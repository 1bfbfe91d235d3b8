"""Is a model a submission names one that a worker could ever load? Asked before anything is queued.

A mistyped hub id (``senmaonk/loopfree-sd15`` for ``senmaonk/loopfree-sd1.5``) would otherwise be
accepted, wait for a worker that never comes and fail on every job once one does. So, per distinct
model of a file:

- a local folder was checked by the parser (it must hold ``model_index.json``);
- a hub id that a live worker serves, that the local hub cache holds, or that is one of the
  published Loopfree models needs no question;
- any other hub id is looked up on the hub (``huggingface_hub``'s ``model_info``, honouring
  ``HF_ENDPOINT`` and ``HF_TOKEN``). Not there: the submission is refused in one line, naming the
  closest model the fleet serves. The hub cannot be asked (offline, ``HF_HUB_OFFLINE``, a
  timeout): a warning naming the closest served model, and the submission goes on.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

from core.errors import ModelNotFound
from core.modelinfo import KNOWN_NATIVE_SIZES

HUB_TIMEOUT_S = 5.0
"""How long one question to the hub may take before the model counts as not checkable."""


class UnknownModel(ModelNotFound):
    """The hub says no model has this id."""


def check_models(models: Iterable[str], served: Iterable[str]) -> list[str]:
    """Raise ``UnknownModel`` for a hub id the hub does not know; return warnings for ones that
    could not be checked."""
    served = sorted(set(served))
    warnings = []
    for model in sorted(set(models)):
        if Path(model).is_absolute() or model in served or model in KNOWN_NATIVE_SIZES:
            continue
        if _cached(model):
            continue
        answer = _ask_hub(model)
        closest = closest_model(model, served)
        hint = f"; did you mean {closest!r} (a live worker serves it)?" if closest else ""
        if answer is False:
            raise UnknownModel(
                f"model {model!r} does not exist on the Hugging Face hub{hint} Check the id (a "
                "private model needs HF_TOKEN), or pass a local diffusers folder; nothing was "
                "queued"
            )
        if answer is None:
            warnings.append(
                f"could not ask the hub whether model {model!r} exists (offline?){hint or '.'} "
                "Its jobs wait for a worker that can load it"
            )
    return warnings


def closest_model(model: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``model`` (a typo's likely target), if any is close."""
    names = list(dict.fromkeys([*candidates, *KNOWN_NATIVE_SIZES]))
    matches = difflib.get_close_matches(model, names, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _cached(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a base dependency
        return False
    try:
        return isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    except ValueError:
        return False


def _ask_hub(model: str) -> bool | None:
    """True: the hub has it; False: the hub says it does not; None: the hub cannot be asked."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return True  # it exists; the workers' token decides whether they may load it
    except RepositoryNotFoundError:
        return False
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        return False if status == 404 else None
    except Exception:  # noqa: BLE001 - no network, DNS, TLS, a timeout: cannot ask
        return None
    return True
