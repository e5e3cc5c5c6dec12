"""The rule policy in force: loaded from the rule files and the built-in packs, watched, and reloaded
(an invalid file is reported as FILE:LINE and the running rules stay)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from monitor.core.errors import (
    ConfigError,
)
from monitor.core.metrics import Metrics
from rules.engine import Decider
from rules.loader import Policy, load_policy

log = logging.getLogger(__name__)


class PolicyHolder:
    """The rules in force, and how to reload them without losing the rule state."""

    def __init__(self, site_files: list[Path], *, builtin: bool, packs: list[str] | None,
                 metrics: Metrics) -> None:
        self.site_files = site_files
        self.builtin = builtin
        self.packs = packs
        self.metrics = metrics
        self.policy: Policy = load_policy(site_files, builtin=builtin, packs=packs)
        self.decider = Decider(self.policy.ruleset, self.policy.guards, self.policy.silences)
        self._mtimes = self._stat()

    def _stat(self) -> dict[Path, tuple[float, int, str]]:
        """Each rule file's mtime, size and content digest: two writes within one mtime tick still
        differ by content."""
        out: dict[Path, tuple[float, int, str]] = {}
        for p in [*self.policy.files, *self.site_files]:
            try:
                st = os.stat(p)
                digest = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
                out[p] = (st.st_mtime, st.st_size, digest)
            except OSError:
                out[p] = (-1.0, -1, "")
        return out

    def changed(self) -> bool:
        return self._stat() != self._mtimes

    def faulted_enclosures(self, now: float) -> set[str]:
        """The enclosures the rules' state reports an enclosure-wide fault in (no spare is taken from
        them)."""
        return self.decider.state.faulted_enclosures(now)

    def reload(self) -> list[str]:
        """Reload the rule files. Returns the problems (the running rules stay) or [] on success."""
        self._mtimes = self._stat()
        try:
            new = load_policy(self.site_files, builtin=self.builtin, packs=self.packs)
        except ConfigError as exc:
            self.metrics.inc("rules_reload_total", result="error")
            for issue in exc.issues:
                log.error("rules reload: %s (the running rules stay in force)", issue)
            return [str(i) for i in exc.issues]
        old = self.policy.ruleset.rules
        added = sorted(set(new.ruleset.rules) - set(old))
        removed = sorted(set(old) - set(new.ruleset.rules))
        changed = sorted(r for r in set(old) & set(new.ruleset.rules)
                         if old[r].spec != new.ruleset.rules[r].spec)
        self.policy = new
        self.decider.ruleset = new.ruleset
        self.decider.guards = new.guards
        self.decider.silences = Decider(new.ruleset, new.guards, new.silences).silences
        self.metrics.inc("rules_reload_total", result="ok")
        log.info("rules reloaded: %s; added %s, removed %s, changed %s", new.summary(),
                 added or "none", removed or "none", changed or "none")
        return []
