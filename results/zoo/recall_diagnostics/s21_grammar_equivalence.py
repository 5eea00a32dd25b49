"""Session 21: TinyGrammar's one-hop change leaves the grammar format ("tg") exactly as it was.

Usage: ``PYTHONPATH=. python results/zoo/recall_diagnostics/s21_grammar_equivalence.py [BASE]`` (BASE 0c551e4, the
commit before the change): recall episodes, corpus streams of every earlier kind and of the default mix,
``check_recall``, ``recall_answer_positions`` and ``document_kind`` of the old module (``git show``) against the
current one, on grammar documents, corrupted documents and random recall-word strings.
"""
import importlib.util
import random
import subprocess
import sys
import tempfile

import torch

import common.tinylm.grammar as N

base = sys.argv[1] if len(sys.argv) > 1 else "0c551e4"
old = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
old.write(subprocess.run(["git", "show", f"{base}:common/tinylm/grammar.py"], capture_output=True, text=True, check=True).stdout)
old.close()
spec = importlib.util.spec_from_file_location("common.tinylm.old_grammar", old.name)
O = importlib.util.module_from_spec(spec); sys.modules[spec.name] = O; spec.loader.exec_module(O)
n = 0
for nb in (1, 2, 4, 8):
    for d in (5 * nb + 7, 40, 64, 80, 128, 160, 240):
        if d < 5 * nb + 7: continue
        for seed in (0, 1, 99, 1064):
            a, b = O.recall_episodes(16, d, seed, nb), N.recall_episodes(16, d, seed, nb)
            assert all(torch.equal(x, y) for x, y in zip(a, b)); n += 1
for kind in O.ALL_KINDS:
    for seed in range(5):
        assert torch.equal(O.corpus_tokens(5000, seed, [kind]), N.corpus_tokens(5000, seed, [kind])); n += 1
for seed in range(5):
    assert torch.equal(O.corpus_tokens(20000, seed), N.corpus_tokens(20000, seed)); n += 1
rng = random.Random(0)
vocab = list(O.VOCAB.index)
g = O.TinyGrammar(3, mix={"recall": 1, "recall_dense": 1, "recall_short": 1, "narrative": 1})
for i in range(3000):
    _, w = g.document()
    # every other document corrupted (about one token in ten random), as a model sample might be
    if i % 2:
        w = [rng.choice(vocab) if rng.random() < 0.1 else x for x in w]
    if i % 5 == 0:  # random strings of recall words
        w = [rng.choice(["box", "key", "?", "red", "3", "fox"]) for _ in range(rng.randint(0, 30))]
    assert O.check_recall(w) == N.check_recall(w), w
    assert O.recall_answer_positions(w) == N.recall_answer_positions(w), w
    assert O.document_kind(w) == N.document_kind(w) or "onehop" in N.document_kind(w), (w, O.document_kind(w), N.document_kind(w))
    if O.document_kind(w) != N.document_kind(w): print("kind differs:", " ".join(w[:8]), O.document_kind(w), N.document_kind(w))
    n += 1
print("equivalent on", n, "cases")
