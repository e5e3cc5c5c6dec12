"""Loading rule policies: the built-in packs, then the site's files, with every problem reported as
`FILE:LINE: field: message` in one pass. A failed load leaves nothing half-applied."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from monitor.core.errors import ConfigError, ConfigIssue
from monitor.core.yamlfile import Document, load_document, validate
from rules.engine import Rule, RuleSet, compile_rule
from rules.schema import GuardsSpec, PolicyFile, SilenceSpec

PACKS_DIR = Path(__file__).parent / "packs"


def builtin_packs() -> list[Path]:
    return sorted(PACKS_DIR.glob("*.yaml"))


@dataclass
class Policy:
    ruleset: RuleSet
    guards: GuardsSpec
    silences: list[SilenceSpec]
    files: list[Path]
    overridden: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.ruleset)} rules from {len(self.files)} file(s)"
                f"{f', {len(self.overridden)} overridden' if self.overridden else ''}"
                f"{f', {len(self.disabled)} disabled' if self.disabled else ''}, "
                f"{len(self.silences)} silence(s)")


def _load(path: Path, issues: list[ConfigIssue]) -> tuple[PolicyFile, Document] | None:
    try:
        doc = load_document(path)
        return validate(PolicyFile, doc), doc
    except ConfigError as exc:
        issues.extend(exc.issues)
        return None


def load_policy(site_files: list[Path], *, builtin: bool = True,
                packs: list[str] | None = None) -> Policy:
    """Load the packs and the site's files; ConfigError listing every problem when any is wrong."""
    issues: list[ConfigIssue] = []
    pack_files = [p for p in builtin_packs() if packs is None or p.stem in packs] if builtin else []
    if packs is not None:
        known = {p.stem for p in builtin_packs()}
        for name in sorted(set(packs) - known):
            issues.append(ConfigIssue("rules.packs", 1, "packs", f"no built-in pack {name!r} "
                                      f"(known: {', '.join(sorted(known))})"))
    rules: dict[str, tuple[Rule, bool]] = {}  # id -> (rule, from a site file)
    where: dict[str, tuple[Document, int]] = {}
    guards: GuardsSpec | None = None
    silences: list[SilenceSpec] = []
    overridden: list[str] = []
    disabled: list[str] = []
    order = 0
    for path in [*pack_files, *site_files]:
        site = path not in pack_files
        loaded = _load(path, issues)
        if loaded is None:
            continue
        policy, doc = loaded
        seen_here: set[str] = set()
        for i, spec in enumerate(policy.rules):
            # Lines are looked up only for errors: composing a node tree costs more than the whole
            # load of a large valid file.
            if spec.id in seen_here:
                issues.append(ConfigIssue(str(path), doc.line(("rules", i, "id")), f"rules[{i}].id",
                                          f"duplicate rule id {spec.id}"))
                continue
            seen_here.add(spec.id)
            if not site and not spec.cites:
                issues.append(ConfigIssue(str(path), doc.line(("rules", i, "id")), f"rules[{i}].cites",
                                          "a built-in rule must cite its source"))
            if spec.id in rules:
                if not site or rules[spec.id][1]:
                    issues.append(ConfigIssue(str(path), doc.line(("rules", i, "id")), f"rules[{i}].id",
                                              f"rule id {spec.id} is already defined"))
                    continue
                overridden.append(spec.id)
            order += 1
            rules[spec.id] = (compile_rule(spec, f"{path} rules[{i}]", order), site)
            where[spec.id] = (doc, i)
        for i, rid in enumerate(policy.disable):
            if rid not in rules:
                issues.append(ConfigIssue(str(path), doc.line(("disable", i)), f"disable[{i}]",
                                          f"no rule {rid} to disable"))
            else:
                disabled.append(rid)
        if policy.guards is not None:
            if guards is not None:
                issues.append(ConfigIssue(str(path), doc.line(("guards",)), "guards",
                                          "guards are already set by another file"))
            guards = policy.guards
        silences.extend(policy.silences)
    for rid, (rule, _site) in rules.items():
        doc, i = where[rid]
        refs = [("clears", c) for c in rule.spec.clears]
        refs += [("requires.rules", r) for r in (rule.spec.requires.rules if rule.spec.requires else [])]
        for name, ref in refs:
            if ref not in rules:
                issues.append(ConfigIssue(doc.file, doc.line(("rules", i, name.split(".")[0])),
                                          f"rules[{i}].{name}", f"no rule {ref}"))
    ids = [s.id for s in silences]
    for dup in sorted({x for x in ids if ids.count(x) > 1}):
        issues.append(ConfigIssue("silences", 1, "silences", f"duplicate silence id {dup}"))
    if issues:
        raise ConfigError(issues)
    active = [r for rid, (r, _) in rules.items() if rid not in disabled]
    return Policy(RuleSet(active), guards or GuardsSpec(), silences, [*pack_files, *site_files],
                  overridden, disabled)
