"""Grammar-constrained decoding: a regular expression compiled into a token-level automaton.

A pretrained VLM that never learnt our action language can still only produce valid actions if
every token it may choose keeps the text inside the grammar. :func:`compile_grammar` turns a
regular expression into an automaton over the tokenizer's vocabulary:

1. the expression is parsed by Python's own regular-expression parser and built into a
   character NFA (Thompson construction), determinised lazily (subset construction, one DFA
   state per set of NFA states, computed when first reached);
2. every token has a *surface*: the text it appends (byte-level BPE: the token's own text;
   WordPiece / SentencePiece: with or without the separating space, depending on whether it is
   the first generated token);
3. a token is allowed in a state when its whole surface keeps the DFA alive *and* a complete
   match is still reachable afterwards by whole tokens; a stop token only where the text so far
   is a complete match. Allowed sets are computed per state on first use (only tokens whose
   first character is live are walked) and cached.

The same automaton masks the draft's and the target's logits (the edge compiles it for the draft,
the verifier for the target; identical tokenizers give identical masks), so speculative decoding
stays exactly the *constrained* target's output: greedy tokens are identical, samples follow the
constrained target distribution. A token the grammar forces (the only one allowed) is appended
without a draft forward pass.
"""

from __future__ import annotations

import re
from re import _constants as sre_c  # noqa: the stdlib's own regex parser; public in spirit since 3.11
from re import _parser as sre_parse
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch

MAX_PATTERN_CHARS = 4096  # a grammar arrives over the wire: keep compilation bounded
MAX_NFA_STATES = 20000


class GrammarError(ValueError):
    """A grammar that cannot be compiled (unsupported construct, too large)."""


# -- regular expression -> character NFA ------------------------------------------------------
class _Nfa:
    """States are ints; ``edges[s]`` lists ``(predicate, target)``; ``eps[s]`` epsilon targets."""

    def __init__(self):
        self.edges: List[List[Tuple[object, int]]] = []
        self.eps: List[List[int]] = []

    def new(self) -> int:
        if len(self.edges) >= MAX_NFA_STATES:
            raise GrammarError(f"grammar too large (more than {MAX_NFA_STATES} automaton states)")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1


_CATEGORIES = {
    sre_c.CATEGORY_DIGIT: str.isdigit,
    sre_c.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    sre_c.CATEGORY_SPACE: str.isspace,
    sre_c.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    sre_c.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    sre_c.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}


def _char_class(items) -> object:
    """A predicate for an ``IN`` set (literals, ranges, categories, negation)."""
    negate = False
    tests = []
    for op, arg in items:
        if op is sre_c.NEGATE:
            negate = True
        elif op is sre_c.LITERAL:
            tests.append(lambda c, v=chr(arg): c == v)
        elif op is sre_c.RANGE:
            tests.append(lambda c, lo=arg[0], hi=arg[1]: lo <= ord(c) <= hi)
        elif op is sre_c.CATEGORY and arg in _CATEGORIES:
            tests.append(_CATEGORIES[arg])
        else:
            raise GrammarError(f"unsupported character-class item {op}")
    if negate:
        return lambda c: not any(t(c) for t in tests)
    return lambda c: any(t(c) for t in tests)


def _build(nfa: _Nfa, items, start: int) -> int:
    """Add the parsed sequence ``items`` after ``start``; return its end state."""
    state = start
    for op, arg in items:
        if op is sre_c.LITERAL:
            nxt = nfa.new()
            nfa.edges[state].append((chr(arg), nxt))
            state = nxt
        elif op is sre_c.NOT_LITERAL:
            nxt = nfa.new()
            nfa.edges[state].append((lambda c, v=chr(arg): c != v, nxt))
            state = nxt
        elif op is sre_c.ANY:
            nxt = nfa.new()
            nfa.edges[state].append((lambda c: c != "\n", nxt))
            state = nxt
        elif op is sre_c.IN:
            nxt = nfa.new()
            nfa.edges[state].append((_char_class(arg), nxt))
            state = nxt
        elif op is sre_c.SUBPATTERN:
            state = _build(nfa, arg[-1], state)
        elif op is sre_c.BRANCH:
            end = nfa.new()
            for alternative in arg[1]:
                branch = nfa.new()
                nfa.eps[state].append(branch)
                nfa.eps[_build(nfa, alternative, branch)].append(end)
            state = end
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
            low, high, body = arg
            if high is sre_c.MAXREPEAT:
                high = None
            if low > 1000 or (high is not None and high > 1000):
                raise GrammarError("repetition counts above 1000 are not supported")
            for _ in range(low):
                state = _build(nfa, body, state)
            if high is None:
                loop = nfa.new()
                nfa.eps[state].append(loop)
                nfa.eps[_build(nfa, body, loop)].append(loop)
                state = loop
            else:
                end = nfa.new()
                nfa.eps[state].append(end)
                for _ in range(high - low):
                    state = _build(nfa, body, state)
                    nfa.eps[state].append(end)
                state = end
        else:
            raise GrammarError(f"unsupported regular-expression construct {op} (anchors, look-arounds and "
                               "back-references are not regular)")
    return state


class CharDfa:
    """The NFA determinised lazily. State 0 is the start; -1 is dead."""

    DEAD = -1

    def __init__(self, pattern: str):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise GrammarError(f"grammar longer than {MAX_PATTERN_CHARS} characters")
        try:
            parsed = sre_parse.parse(pattern)
        except re.error as exc:
            raise GrammarError(f"invalid grammar {pattern[:60]!r}: {exc}") from None
        self.nfa = _Nfa()
        start = self.nfa.new()
        self.accept = _build(self.nfa, list(parsed), start)
        self.sets: List[FrozenSet[int]] = []
        self.index: Dict[FrozenSet[int], int] = {}
        self.moves: List[Dict[str, int]] = []
        self._state(self._closure({start}))

    def _closure(self, states) -> FrozenSet[int]:
        out, todo = set(states), list(states)
        while todo:
            for nxt in self.nfa.eps[todo.pop()]:
                if nxt not in out:
                    out.add(nxt)
                    todo.append(nxt)
        return frozenset(out)

    def _state(self, nfa_states: FrozenSet[int]) -> int:
        if not nfa_states:
            return self.DEAD
        if nfa_states not in self.index:
            self.index[nfa_states] = len(self.sets)
            self.sets.append(nfa_states)
            self.moves.append({})
        return self.index[nfa_states]

    def step(self, state: int, char: str) -> int:
        if state == self.DEAD:
            return state
        moves = self.moves[state]
        if char not in moves:
            targets = {t for s in self.sets[state] for test, t in self.nfa.edges[s]
                       if (test == char if isinstance(test, str) else test(char))}
            moves[char] = self._state(self._closure(targets))
        return moves[char]

    def walk(self, state: int, text: str) -> int:
        for char in text:
            state = self.step(state, char)
            if state == self.DEAD:
                break
        return state

    def accepting(self, state: int) -> bool:
        return state != self.DEAD and self.accept in self.sets[state]


# -- token surfaces ---------------------------------------------------------------------------
def token_surfaces(tokenizer, token_count: int) -> Tuple[List[Optional[str]], List[Optional[str]]]:
    """``(first, later)``: the text each token appends as the first generated token and after
    another token (None: a special token or a partial character - never allowed)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            special.add(int(token_id))

    def decode(batch):
        return tokenizer.batch_decode(batch, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    ids = list(range(token_count))
    alone = decode([[t] for t in ids])
    reference = _reference_word(alone, special)
    ref_text = alone[reference]
    joined = decode([[reference, t] for t in ids])
    first: List[Optional[str]] = []
    later: List[Optional[str]] = []
    for token in ids:
        text = alone[token]
        if token in special or not text or "\ufffd" in text:
            first.append(None)
            later.append(None)
            continue
        after = joined[token][len(ref_text):] if joined[token].startswith(ref_text) else text
        first.append(text)
        later.append(after or None)
    return first, later


def _reference_word(decoded: List[str], special) -> int:
    """A plain alphabetic word token to measure how other tokens attach after a token."""
    for token, text in enumerate(decoded):
        if token not in special and len(text) >= 2 and text.isascii() and text.isalpha():
            return token
    raise GrammarError("the tokenizer has no plain word token to measure token surfaces with")


# -- token automaton -----------------------------------------------------------------------------
class TokenGrammar:
    """The grammar over token ids. A state is ``(dfa_state, started)``."""

    def __init__(self, pattern: str, tokenizer, vocab_size: int, stop_ids: Sequence[int],
                 token_count: Optional[int] = None):
        self.pattern = pattern
        self.dfa = CharDfa(pattern)
        self.vocab_size = vocab_size  # logits columns (masks have this size)
        count = min(vocab_size, token_count or len(tokenizer))
        self.stop_ids = sorted(int(t) for t in stop_ids if 0 <= int(t) < count)
        if not self.stop_ids:
            raise GrammarError("a grammar needs a stop token to end the output with")
        first, later = token_surfaces(tokenizer, count)
        self._surfaces = (first, later)
        self._by_first_char = tuple(self._index(s) for s in (first, later))
        self._moves: Dict[Tuple[int, bool], Dict[int, Tuple[int, bool]]] = {}
        self._live: Dict[Tuple[int, bool], bool] = {}
        self._allowed: Dict[Tuple[int, bool], List[int]] = {}
        self._masks: Dict[Tuple[int, bool, int], torch.Tensor] = {}

    @staticmethod
    def _index(surfaces: List[Optional[str]]) -> Dict[str, List[int]]:
        out: Dict[str, List[int]] = {}
        for token, text in enumerate(surfaces):
            if text:
                out.setdefault(text[0], []).append(token)
        return out

    # -- states --------------------------------------------------------------------------------
    def start(self) -> Tuple[int, bool]:
        return (0, False)

    def advance(self, state: Tuple[int, bool], token: int) -> Tuple[int, bool]:
        dfa_state, started = state
        if token in self.stop_ids:
            return (CharDfa.DEAD, True)  # nothing follows a stop token
        surfaces = self._surfaces[1 if started else 0]
        text = surfaces[token] if 0 <= token < len(surfaces) else None
        if text is None:
            return (CharDfa.DEAD, True)
        return (self.dfa.walk(dfa_state, text), True)

    def state_after(self, tokens: Sequence[int]) -> Tuple[int, bool]:
        state = self.start()
        for token in tokens:
            state = self.advance(state, token)
        return state

    def is_dead(self, state: Tuple[int, bool]) -> bool:
        return state[0] == CharDfa.DEAD or not self.allowed_ids(state)

    # -- allowed tokens ---------------------------------------------------------------------
    def _candidates(self, state: Tuple[int, bool]) -> Dict[int, Tuple[int, bool]]:
        """Tokens whose surface keeps the DFA alive from ``state``, with the state they lead to."""
        if state not in self._moves:
            dfa_state, started = state
            surfaces = self._surfaces[1 if started else 0]
            moves = {}
            for char, tokens in self._by_first_char[1 if started else 0].items():
                if self.dfa.step(dfa_state, char) == CharDfa.DEAD:
                    continue
                for token in tokens:
                    nxt = self.dfa.walk(dfa_state, surfaces[token])
                    if nxt != CharDfa.DEAD:
                        moves[token] = (nxt, True)
            self._moves[state] = moves
        return self._moves[state]

    def _is_live(self, state: Tuple[int, bool]) -> bool:
        """A complete match is still reachable from ``state`` by whole tokens. A token whose text
        fits the grammar can still lead nowhere (WordPiece's "for" before "forward" needs a
        continuation without a space): such tokens are never allowed. Decided for every state
        reachable from ``state`` at once (a fixpoint over that finite graph)."""
        if state not in self._live:
            reachable, todo = {state}, [state]
            while todo:
                for nxt in self._candidates(todo.pop()).values():
                    if nxt not in reachable and nxt not in self._live:
                        reachable.add(nxt)
                        todo.append(nxt)
            live = {s for s in reachable if self.dfa.accepting(s[0])}
            changed = True
            while changed:
                changed = False
                for s in reachable - live:
                    if any(n in live or self._live.get(n, False) for n in self._candidates(s).values()):
                        live.add(s)
                        changed = True
            for s in reachable:
                self._live[s] = s in live
        return self._live[state]

    def allowed_ids(self, state: Tuple[int, bool]) -> List[int]:
        if state[0] == CharDfa.DEAD:
            return []
        if state not in self._allowed:
            allowed = [t for t, nxt in self._candidates(state).items() if self._is_live(nxt)]
            if self.dfa.accepting(state[0]):
                allowed.extend(self.stop_ids)
            self._allowed[state] = sorted(allowed)
        return self._allowed[state]

    def forced(self, state: Tuple[int, bool]) -> Optional[int]:
        """The only token allowed here, if exactly one is."""
        allowed = self.allowed_ids(state)
        return allowed[0] if len(allowed) == 1 else None

    def allowed(self, state: Tuple[int, bool], head_ids: Optional[torch.Tensor] = None, device=None) -> torch.Tensor:
        """Boolean mask over the head's columns (the full vocabulary when ``head_ids`` is None)."""
        key = (state[0], state[1], 0 if head_ids is None else id(head_ids))
        mask = self._masks.get(key)
        if mask is None:
            full = torch.zeros(self.vocab_size, dtype=torch.bool)
            full[self.allowed_ids(state)] = True
            mask = full if head_ids is None else full[head_ids.cpu()]
            self._masks[key] = mask = mask.to(device) if device is not None else mask
        return mask


def compile_grammar(pattern: str, adapter, stop_ids: Sequence[int]) -> TokenGrammar:
    """The token automaton of ``pattern`` for ``adapter``'s tokenizer (edge and cloud alike)."""
    return TokenGrammar(pattern, adapter.tokenizer, adapter.vocab_size, stop_ids, adapter.token_count)
