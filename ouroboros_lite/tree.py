"""Token trees: drafts merged into a trie whose nodes go to the target in one batch.

A tree hangs below the root (the last accepted token, not yet decoded). Nodes are stored
parent-before-child; parent -1 means the root. Each node remembers where its token came from
("draft" or "pool") so the output can say which tokens the target merely confirmed.
See native/ouro.h for how the tree becomes one llama_batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Root-to-leaf paths a target tree may have unless the drafter is told the verifier's
# (RuntimeOptions.max_tree_paths, the target context's sequence count).
DEFAULT_MAX_PATHS = 16


@dataclass(frozen=True)
class TokenTree:
    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    # node -> the distribution its token was sampled from (a draft model sampling at temperature > 0).
    # Nodes not listed are fixed by the prefix (pool phrases, greedy drafts); see acceptance.py.
    draft_probs: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def chain(cls, tokens, source: str, draft_probs: dict | None = None) -> TokenTree:
        """A single path below the root: each token is the child of the one before it."""
        return cls(tuple(tokens), tuple(range(-1, len(tokens) - 1)), (source,) * len(tokens), draft_probs or {})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_paths(self) -> int:
        """Number of root-to-leaf paths (the sequence ids the batch needs)."""
        has_child = set(self.parents)
        return max(1, sum(1 for i in range(len(self.tokens)) if i not in has_child))

    @property
    def depth(self) -> int:
        depths: list[int] = []
        for p in self.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        return max(depths, default=0)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node`."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


@dataclass
class TreeBuilder:
    """Merges token sequences into a trie; shared prefixes become one node.

    At most max_nodes nodes and max_paths root-to-leaf paths (None: no limit): a token that
    would exceed either is dropped with the rest of its sequence."""

    max_nodes: int
    max_paths: int | None = None
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    n_paths: int = 1  # the root alone is one path
    _children: dict[tuple[int, int], int] = field(default_factory=dict)
    _has_child: set[int] = field(default_factory=set)

    def add(self, sequence, source: str, parent: int = -1) -> list[int]:
        """Add `sequence` below node `parent`; returns the node index of each token kept."""
        nodes = []
        for token in sequence:
            key = (parent, int(token))
            node = self._children.get(key)
            if node is None:
                if len(self.tokens) >= self.max_nodes or not self._may_branch_at(parent):
                    break
                node = len(self.tokens)
                self.tokens.append(int(token))
                self.parents.append(parent)
                self.sources.append(source)
                self._children[key] = node
                self.n_paths += parent in self._has_child  # a second child opens a path
                self._has_child.add(parent)
            nodes.append(node)
            parent = node
        return nodes

    def _may_branch_at(self, parent: int) -> bool:
        """Whether a new child of `parent` keeps the tree within max_paths (a leaf's first child
        extends its path; any other child opens one)."""
        return parent not in self._has_child or self.max_paths is None or self.n_paths < self.max_paths

    def build(self) -> TokenTree:
        return TokenTree(tuple(self.tokens), tuple(self.parents), tuple(self.sources))
