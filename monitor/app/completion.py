"""Shell completion generated from the argparse parser: `failover-monitor completion bash`."""

from __future__ import annotations

import argparse
import shlex


def _words(p: argparse.ArgumentParser) -> tuple[list[str], dict[str, argparse.ArgumentParser]]:
    """The options of a parser and its subcommands by name."""
    options: list[str] = []
    subs: dict[str, argparse.ArgumentParser] = {}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
        else:
            options.extend(action.option_strings)
    return options, subs


def _cases(p: argparse.ArgumentParser, path: str, out: list[str]) -> None:
    options, subs = _words(p)
    choices: list[str] = []
    for action in p._actions:
        if (not action.option_strings and action.choices
                and not isinstance(action, argparse._SubParsersAction)):
            choices.extend(str(c) for c in action.choices)
    words = " ".join([*sorted(subs), *choices, *options])
    out.append(f"    {shlex.quote(path)}) words={shlex.quote(words)} ;;")
    for name, sub in sorted(subs.items()):
        _cases(sub, f"{path} {name}".strip(), out)


def bash_completion(p: argparse.ArgumentParser) -> str:
    """A bash script completing subcommands, options and choices; files for path arguments."""
    prog = p.prog
    cases: list[str] = []
    _cases(p, "", cases)
    fn = "_" + prog.replace("-", "_")
    path_options = sorted({o for _, sub in _walk(p) for a in sub._actions if a.type is not None
                           and getattr(a.type, "__name__", "") == "Path" for o in a.option_strings})
    option_choices: dict[str, list[str]] = {}
    for _, sub in _walk(p):
        for a in sub._actions:
            if a.option_strings and a.choices:
                for o in a.option_strings:
                    option_choices.setdefault(o, []).extend(str(c) for c in a.choices)
    choice_cases = [f"    {o}) COMPREPLY=($(compgen -W {shlex.quote(' '.join(dict.fromkeys(c)))}"
                    ' -- "$cur")); return 0 ;;' for o, c in sorted(option_choices.items())]
    return "\n".join([
        f"# bash completion for {prog}, generated from its argument parser:",
        f"#   {prog} completion bash > /etc/bash_completion.d/{prog}   (or source it from ~/.bashrc)",
        f"{fn}() {{",
        '    local cur prev path word i words',
        '    cur=${COMP_WORDS[COMP_CWORD]}',
        '    prev=${COMP_WORDS[COMP_CWORD-1]}',
        f'    case "$prev" in {"|".join(path_options) or "--no-such-option"}) '
        'COMPREPLY=($(compgen -f -- "$cur")); return 0 ;; esac',
        '    case "$prev" in',
        *choice_cases,
        '    esac',
        '    path=""',
        '    for ((i = 1; i < COMP_CWORD; i++)); do',
        '        word=${COMP_WORDS[i]}',
        '        case "$word" in -*) continue ;; esac',
        '        case " $(' + fn + '_subcommands "$path") " in',
        '            *" $word "*) path="${path:+$path }$word" ;;',
        '        esac',
        '    done',
        '    case "$path" in',
        *cases,
        '    *) words="" ;;',
        '    esac',
        '    COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        '}',
        f'{fn}_subcommands() {{',
        '    case "$1" in',
        *[f"    {shlex.quote(path)}) echo {shlex.quote(' '.join(sorted(_words(sub)[1])))} ;;"
          for path, sub in _walk(p)],
        '    esac',
        '}',
        f"complete -F {fn} {prog}",
        "",
    ])


def _walk(p: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, p)]
    for name, sub in sorted(_words(p)[1].items()):
        out.extend(_walk(sub, f"{path} {name}".strip()))
    return out
