"""What a person typed into a form that could not be done: kept, and given back.

A form that changes something (pause, resume, undo, approve, reject, rerun) can
arrive after the person's session expired, or while the database cannot be
reached. Nothing is done then, and nothing is dropped either: the fields are kept
as a Draft, the person reads that nothing was done (and why), and the page the
form was on shows the form again with what they typed (after signing in again
where needed). Templates read a draft back with `typed(action, field, **match)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.datastructures import FormData
from starlette.requests import Request

# Fields never kept: the CSRF token is per page, and a password is never stored in a draft.
_NOT_KEPT = {"csrftoken", "password", "_draft", "next", "user"}

# Fields a person types (shown again as inputs); the rest go back as hidden fields.
TYPED = ("reason",)


@dataclass
class Draft:
    action: str  # the form's target path: /automations/pause
    fields: list[tuple[str, str]]  # in form order; repeated names (action, row) kept
    back: str  # the page the form was on
    not_done: str  # "billing-bot was not paused"
    button: str = ""  # the button's words for a retry: "Pause billing-bot"

    def get(self, name: str) -> str:
        return next((v for k, v in self.fields if k == name), "")

    def matches(self, action: str, **match: Any) -> bool:
        return self.action == action and all(self.get(k) == str(v) for k, v in match.items())

    def to_json(self) -> str:
        return json.dumps({"action": self.action, "fields": self.fields, "back": self.back,
                           "not_done": self.not_done, "button": self.button})

    @classmethod
    def from_json(cls, text: str) -> "Draft | None":
        try:
            data = json.loads(text)
            return cls(str(data["action"]), [(str(k), str(v)) for k, v in data["fields"]],
                       safe_path(str(data["back"])), str(data["not_done"]), str(data.get("button", "")))
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def hidden(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.fields if k not in TYPED]

    @property
    def typed(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.fields if k in TYPED]


def safe_path(target: str | None, default: str = "/") -> str:
    """Only a path on this site: not //host or /\\host, which browsers take as another site."""
    return target if target and target.startswith("/") and target[1:2] not in ("/", "\\") else default


# What each form would have done, said as not done; and the button that sends it.
Describe = Callable[[dict[str, str], dict[str, str]], tuple[str, str]]


def _target(fields: dict[str, str]) -> str:
    if fields.get("table"):
        return f"table {fields['table']}"
    name = fields.get("automation", "")
    return "every automation" if name == "*" else (name or "the automation")


def _run(path: dict[str, str]) -> str:
    return f"run {path.get('run_id', '')[:8]}"


DESCRIBE: dict[str, Describe] = {
    "pause": lambda f, p: (f"{_target(f)} was not paused", f"Pause {_target(f)}"),
    "resume": lambda f, p: (f"{_target(f)} was not resumed", f"Resume {_target(f)}"),
    "undo": lambda f, p: (f"{_run(p)} was not undone", f"Undo {_run(p)}"),
    "approve": lambda f, p: (f"held change #{p.get('pending_id')} was not approved"
                             + (f" and {f['resume']} was not resumed" if f.get("resume") else "")
                             + (f" and writes to {f['resume_table'].removeprefix('public.')} were not resumed"
                                if f.get("resume_table") else ""),
                             ("Resume and approve #" if f.get("resume") or f.get("resume_table") else "Approve #")
                             + str(p.get("pending_id"))),
    "reject": lambda f, p: (f"held change #{p.get('pending_id')} was not rejected", f"Reject #{p.get('pending_id')}"),
    "rerun": lambda f, p: (f"no rerun of {_run(p)} was opened", f"Rerun {_run(p)}"),
}


def back_of(request: Request, default: str) -> str:
    """The page a form was sent from (its Referer, when on this site), else default."""
    referer = request.headers.get("referer", "")
    base = str(request.base_url).rstrip("/")
    return safe_path(referer[len(base):], default) if referer.startswith(base + "/") else default


def capture(request: Request, form: FormData, kind: str, default_back: str) -> Draft:
    """The form as a Draft, with where it came from."""
    fields = [(k, str(v)) for k, v in form.multi_items() if k not in _NOT_KEPT and isinstance(v, str)]
    back = back_of(request, default_back)
    not_done, button = DESCRIBE[kind](dict(fields), {k: str(v) for k, v in request.path_params.items()})
    return Draft(request.url.path, fields, back, not_done, button)


@dataclass
class Typed:
    """The template helper: typed('/automations/pause', 'reason', automation='billing-bot')."""

    draft: Draft | None = None
    used: set[str] = field(default_factory=set)

    def __call__(self, action: str, name: str, **match: Any) -> str:
        if self.draft is None or not self.draft.matches(action, **match):
            return ""
        return self.draft.get(name)
