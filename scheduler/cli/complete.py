"""Shell completion for bash and zsh, generated from the parser itself so it cannot drift:
``eval "$(scheduler completion bash)"``; zsh, after compinit:
``source <(scheduler completion zsh)`` (a native compdef function)."""

from __future__ import annotations

import argparse
import shlex
from typing import Any


def _tree(parser: argparse.ArgumentParser, path: str, out: dict[str, list[str]]) -> None:
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                _tree(child, f"{path} {name}", out)
        elif action.option_strings and action.help is not argparse.SUPPRESS:
            words.extend(o for o in action.option_strings if o.startswith("--"))
        elif action.choices and not action.option_strings:
            words.extend(str(c) for c in action.choices)
    out[path] = sorted(set(words))


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script: commands, actions and long options at each level."""
    tree: dict[str, list[str]] = {}
    _tree(parser, "", tree)
    cases = "\n".join(
        f"        {shlex.quote(path)}) echo {shlex.quote(' '.join(words))} ;;"
        for path, words in sorted(tree.items())
    )
    bash = f"""_scheduler_words() {{
    case "$1" in
{cases}
    esac
}}
_scheduler() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        [[ $word == -- ]] && return 0
        case " $(_scheduler_words "$path") " in
            *" $word "*) [[ $word == -* ]] || path="$path $word" ;;
        esac
    done
    COMPREPLY=($(compgen -W "$(_scheduler_words "$path")" -- "$cur"))
}}
complete -F _scheduler scheduler"""
    if shell == "zsh":
        # zsh's own completion system: $words is 1-based, compadd filters by the prefix.
        return f"""_scheduler_words() {{
    case "$1" in
{cases}
    esac
}}
_scheduler() {{
    local path="" word i
    for ((i = 2; i < CURRENT; i++)); do
        word=${{words[i]}}
        [[ $word == -- ]] && return 0
        case " $(_scheduler_words "$path") " in
            *" $word "*) [[ $word == -* ]] || path="$path $word" ;;
        esac
    done
    compadd -- ${{=$(_scheduler_words "$path")}}
}}
compdef _scheduler scheduler"""
    return bash


def add_completion(sub: Any) -> None:
    completion = sub.add_parser("completion", help="print a bash or zsh completion script")
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
