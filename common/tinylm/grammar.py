"""TinyGrammar: a seeded, versioned procedural corpus whose structure is known exactly.

Papers that need a pretrained language model (LoLCATs, ReSA, NADO, MNPO, PUMA) cannot download one, so
the repository trains its own (:mod:`common.tinylm.model`) on text produced by this module. Because every
document comes from a small hand-written grammar, the quantities those papers measure are *exact*:
a parser decides grammaticality, a register rule decides formality, and the answer of every recall query
and every arithmetic chain is known.

The corpus mixes four kinds of documents, each wrapped as ``<bos> ... <eos>``:

1. **narrative**: 1-4 sentences ``[opener ,] NP verb (NP | prep NP) [adverb] .`` with *selectional
   restrictions* (``eat`` wants an animate subject and a food object, ``read`` a person and a document,
   ...), number agreement (``the fox sees`` / ``the foxes see``) and a **register**: a formal document draws
   from the formal and neutral synonyms of each concept (``the gentleman observes the manuscript``), an
   informal one from the informal and neutral synonyms (``so , the guy spots the comic``).
2. **recall**: bindings ``box 17 key blue .`` early, filler sentences, then a query ``? box 17 key blue``;
   the answer token (``blue``) is predicted from the query ``? box 17 key``.
3. **arithmetic**: a running-state chain ``calc 12 + 3 = 15 - 7 = 8 ; answer 8`` (values modulo 100,
   operands 1-9), checkable step by step.
4. **keywords**: ``keywords : fox see river => the fox sees the river .``: the lemmas of a sentence's
   subject, verb and object in random order, then the sentence (a CommonGen analogue).

One more kind is *outside* the default mix (:data:`EXTRA_KINDS`; it never appears in the default stream,
whose hash is therefore unchanged, and is drawn only when a ``mix`` names it):

5. **recall_dense**: a multi-query associative-recall document: 2-12 bindings ``box B key C .`` (a
   narrative sentence sometimes between two), a filler block of 0-150 tokens, then 2-10 queries
   ``? box B key C`` of bound boxes (a sentence sometimes between two), so that one document carries many
   recall answers at distances from a few to ~240 tokens. Used to continue training a checkpoint into a
   teacher that actually recalls (``tinylm_recall``).
6. **recall_short**: the same document made short (at most 60 words): 1-4 bindings, 2-6 queries, a
   filler block of at most what the budget leaves, so answers sit 5-55 tokens after their binding and
   about one token in six is a recall answer: the first stage of a recall curriculum (dense, near
   episodes first, then ``recall_dense``'s longer distances).
7. **recall_dense_onehop** and 8. **recall_short_onehop**: the same two documents (same draws) in the
   *one-hop* binding format ``box B C .`` with queries ``? box B C`` (:data:`RECALL_FORMATS`). In the grammar's
   own format the same ``key`` precedes every colour, so a lookup must read the box two tokens back (a two-hop
   circuit that small models did not find in session 20-21's probes, ``results/zoo/recall_diagnostics``);
   here the colour follows its box, as in Zoology's MQAR, and ordinary induction suffices.

Changing anything here changes the token stream; :data:`CORPUS_HASH` records the sha256 of the first
1000 tokens at the canonical seed, and the test suite recomputes it, so a grammar change that would
invalidate the committed checkpoint is caught. Bump :data:`GRAMMAR_VERSION` (and retrain) when it changes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

GRAMMAR_VERSION = "tinygrammar-1.0"
CANONICAL_SEED = 0
#: sha256 of ``corpus_tokens(1000, CANONICAL_SEED)`` as little-endian int64 bytes (see :func:`corpus_hash`).
CORPUS_HASH = "4d2ad171f099869822d32281d377faee65943d0838b98fd366c707a4ce9e593a"
#: the same for streams of one kind each (``corpus_hash(1000, CANONICAL_SEED, [kind])``), so that a change to
#: any generator is caught even if the first 1000 tokens of the mixed stream happen not to exercise it.
KIND_HASHES = {
    "narrative": "9e835fb13bdf6ffa930f8e9e03afe5579a45c9542cd94573c534414a64635f61",
    "recall": "8d57d032844d47ca509a4c3021d0fa7b9c3282bf1ac83fccb5d14025f98ca586",
    "arithmetic": "c31ef5873d85fda88908327effd7ef42be15d4dfadf54c67d33eaa38b84658a6",
    "keywords": "b0506fcc40fa1846ffbe1d3c35b0abda4b4e8a6e04181050c468c59d33c962a8",
    "recall_dense": "8af35e4f9afdc26d38ed1974612a871ba3722f4fd5c9fc6656cdfd6dfe435224",
    "recall_short": "5fab0fcb8923c8257470060da88d086cf99fab7edc01093c077cb4e284f14b44",
    "recall_dense_onehop": "a5bb744b85562e69cc561e70917a1d08698fcdd424b789886acaca5aa9a1b882",
    "recall_short_onehop": "a0cbe5c6dd93681f05410ded9ce04dea7815944a6059c12aa633ef7e44d67b21",
}

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>")
PUNCTUATION = (".", ",", "?", ":", "=>", ";", "+", "-", "=")
KINDS = ("narrative", "recall", "arithmetic", "keywords")
#: kinds outside the default mix (drawn only when a ``mix`` names them; the default stream never has them).
EXTRA_KINDS = ("recall_dense", "recall_short", "recall_dense_onehop", "recall_short_onehop")
ALL_KINDS = KINDS + EXTRA_KINDS
DEFAULT_MIX = {"narrative": 0.4, "recall": 0.25, "arithmetic": 0.15, "keywords": 0.2}
REGISTERS = ("formal", "informal")

# --------------------------------------------------------------------------------------------------
# Lexicon. Each noun entry: (singular, plural or None for a mass noun, register); register "n" is
# neutral, "f" formal, "i" informal. Classes drive the selectional restrictions.
# --------------------------------------------------------------------------------------------------
NOUNS = {
    "person": [
        ("man", "men", "n"), ("woman", "women", "n"), ("child", "children", "n"), ("teacher", "teachers", "n"),
        ("farmer", "farmers", "n"), ("student", "students", "n"), ("gentleman", "gentlemen", "f"),
        ("physician", "physicians", "f"), ("scholar", "scholars", "f"), ("guy", "guys", "i"),
        ("kid", "kids", "i"), ("buddy", "buddies", "i"),
    ],
    "animal": [
        ("fox", "foxes", "n"), ("dog", "dogs", "n"), ("cat", "cats", "n"), ("horse", "horses", "n"),
        ("bird", "birds", "n"), ("rabbit", "rabbits", "n"), ("hound", "hounds", "f"), ("steed", "steeds", "f"),
        ("doggy", "doggies", "i"), ("kitty", "kitties", "i"), ("bunny", "bunnies", "i"),
    ],
    "food": [
        ("bread", None, "n"), ("apple", "apples", "n"), ("soup", None, "n"), ("cake", "cakes", "n"),
        ("fish", None, "n"), ("delicacy", "delicacies", "f"), ("pastry", "pastries", "f"),
        ("snack", "snacks", "i"), ("burger", "burgers", "i"),
    ],
    "drink": [
        ("water", None, "n"), ("milk", None, "n"), ("tea", None, "n"), ("juice", None, "n"),
        ("beverage", "beverages", "f"), ("wine", None, "f"), ("soda", None, "i"), ("booze", None, "i"),
    ],
    "object": [
        ("bag", "bags", "n"), ("lamp", "lamps", "n"), ("hat", "hats", "n"), ("ball", "balls", "n"),
        ("cup", "cups", "n"), ("chair", "chairs", "n"), ("parcel", "parcels", "f"), ("garment", "garments", "f"),
        ("thing", "things", "i"), ("gadget", "gadgets", "i"),
    ],
    "document": [
        ("book", "books", "n"), ("letter", "letters", "n"), ("note", "notes", "n"), ("map", "maps", "n"),
        ("manuscript", "manuscripts", "f"), ("document", "documents", "f"), ("comic", "comics", "i"),
        ("text", "texts", "i"),
    ],
    "place": [
        ("river", "rivers", "n"), ("road", "roads", "n"), ("bridge", "bridges", "n"), ("field", "fields", "n"),
        ("forest", "forests", "n"), ("town", "towns", "n"), ("market", "markets", "n"), ("garden", "gardens", "n"),
        ("residence", "residences", "f"), ("cathedral", "cathedrals", "f"), ("hood", "hoods", "i"),
        ("mall", "malls", "i"),
    ],
}
ANIMATE = ("person", "animal")
THINGS = ("food", "object", "document")

# Verb entry: (base, third-person singular, past, register). A concept groups synonyms across registers;
# ``obj`` lists object classes (transitive) and ``prep`` the prepositions of an intransitive + place PP.
VERBS = {
    "eat": dict(subj=ANIMATE, obj=("food",), forms=[("eat", "eats", "ate", "n"), ("consume", "consumes", "consumed", "f"), ("munch", "munches", "munched", "i")]),
    "drink": dict(subj=ANIMATE, obj=("drink",), forms=[("drink", "drinks", "drank", "n"), ("sip", "sips", "sipped", "f"), ("gulp", "gulps", "gulped", "i")]),
    "see": dict(subj=ANIMATE, obj=ANIMATE + THINGS + ("place",), forms=[("see", "sees", "saw", "n"), ("observe", "observes", "observed", "f"), ("spot", "spots", "spotted", "i")]),
    "read": dict(subj=("person",), obj=("document",), forms=[("read", "reads", "read", "n"), ("peruse", "peruses", "perused", "f"), ("skim", "skims", "skimmed", "i")]),
    "write": dict(subj=("person",), obj=("document",), forms=[("write", "writes", "wrote", "n"), ("compose", "composes", "composed", "f"), ("scribble", "scribbles", "scribbled", "i")]),
    "buy": dict(subj=("person",), obj=THINGS + ("drink",), forms=[("buy", "buys", "bought", "n"), ("purchase", "purchases", "purchased", "f"), ("grab", "grabs", "grabbed", "i")]),
    "carry": dict(subj=ANIMATE, obj=THINGS, forms=[("carry", "carries", "carried", "n"), ("transport", "transports", "transported", "f"), ("lug", "lugs", "lugged", "i")]),
    "find": dict(subj=ANIMATE, obj=THINGS + ("animal",), forms=[("find", "finds", "found", "n"), ("discover", "discovers", "discovered", "f")]),
    "chase": dict(subj=ANIMATE, obj=ANIMATE, forms=[("chase", "chases", "chased", "n"), ("pursue", "pursues", "pursued", "f")]),
    "like": dict(subj=ANIMATE, obj=ANIMATE + THINGS + ("drink", "place"), forms=[("like", "likes", "liked", "n"), ("admire", "admires", "admired", "f"), ("dig", "digs", "dug", "i")]),
    "visit": dict(subj=("person",), obj=("place", "person"), forms=[("visit", "visits", "visited", "n"), ("attend", "attends", "attended", "f")]),
    "cross": dict(subj=ANIMATE, obj=("place",), forms=[("cross", "crosses", "crossed", "n"), ("traverse", "traverses", "traversed", "f")]),
    "go": dict(subj=ANIMATE, prep=("to", "into"), forms=[("go", "goes", "went", "n"), ("proceed", "proceeds", "proceeded", "f"), ("head", "heads", "headed", "i")]),
    "sleep": dict(subj=ANIMATE, prep=("near", "in"), forms=[("sleep", "sleeps", "slept", "n"), ("rest", "rests", "rested", "f"), ("nap", "naps", "napped", "i")]),
    "walk": dict(subj=ANIMATE, prep=("to", "near", "into"), forms=[("walk", "walks", "walked", "n"), ("stroll", "strolls", "strolled", "f"), ("wander", "wanders", "wandered", "i")]),
    "wait": dict(subj=ANIMATE, prep=("near", "in"), forms=[("wait", "waits", "waited", "n"), ("linger", "lingers", "lingered", "f"), ("chill", "chills", "chilled", "i")]),
}
PREPOSITIONS = ("to", "into", "near", "in")

# Adjectives: (word, register, classes they may modify).
ADJECTIVES = [
    ("big", "n", None), ("small", "n", None), ("old", "n", None), ("new", "n", THINGS + ("place",)),
    ("happy", "n", ANIMATE), ("young", "n", ANIMATE), ("hungry", "n", ANIMATE), ("quiet", "n", ANIMATE + ("place",)),
    ("elegant", "f", None), ("splendid", "f", None), ("diligent", "f", ("person",)), ("ancient", "f", THINGS + ("place",)),
    ("cool", "i", None), ("awesome", "i", None), ("cute", "i", ANIMATE), ("lazy", "i", ANIMATE), ("crappy", "i", THINGS + ("place",)),
]
# Determiners by the number of the noun they precede.
DETERMINERS = {"sg": ("the", "a", "this", "every"), "pl": ("the", "some", "these", "many"), "mass": ("the", "some", "this")}
OPENERS = [("moreover", "f"), ("subsequently", "f"), ("indeed", "f"), ("therefore", "f"),
           ("so", "i"), ("well", "i"), ("anyway", "i"), ("basically", "i"), ("then", "n"), ("later", "n")]
ADVERBS = [("today", "n"), ("again", "n"), ("quickly", "n"), ("yesterday", "n"), ("promptly", "f"),
           ("carefully", "f"), ("accordingly", "f"), ("totally", "i"), ("lol", "i"), ("anyhow", "i")]

# Recall and arithmetic vocabularies.
COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray", "gold")
RECALL_WORDS = ("box", "key")
#: binding formats of the recall documents: "tg" ``box B key C .`` / ``? box B key C`` (the grammar's own, in the
#: default mix) and "onehop" ``box B C .`` / ``? box B C`` (extra kinds only).
RECALL_FORMATS = ("tg", "onehop")
ARITH_WORDS = ("calc", "answer")
KEYWORD_WORDS = ("keywords",)
NUMBERS = tuple(str(i) for i in range(100))
MAX_OPERAND = 9


def check_recall_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`RECALL_FORMATS`, else a ValueError."""
    if fmt not in RECALL_FORMATS:
        raise ValueError(f"recall format must be one of {RECALL_FORMATS}, got {fmt!r}")
    return fmt


def binding_words(box: str, color: str, fmt: str = "tg") -> list[str]:
    """One binding: ``box B key C .`` (``fmt="tg"``) or ``box B C .`` (``"onehop"``); the colour is second to last."""
    return ["box", box, "key", color, "."] if check_recall_format(fmt) == "tg" else ["box", box, color, "."]


def query_words(box: str, color: str, fmt: str = "tg") -> list[str]:
    """One query with its answer last: ``? box B key C`` (``fmt="tg"``) or ``? box B C`` (``"onehop"``)."""
    return ["?", "box", box, "key", color] if check_recall_format(fmt) == "tg" else ["?", "box", box, color]


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------
def _lexicon_words() -> list[str]:
    """Every word of the grammar in a fixed order (first occurrence wins), so token ids never depend on hashing."""
    words: list[str] = []
    for entries in NOUNS.values():
        for singular, plural, _ in entries:
            words += [singular] + ([plural] if plural else [])
    for concept in VERBS.values():
        for forms in concept["forms"]:
            words += list(forms[:3])
    words += [a for a, _, _ in ADJECTIVES]
    for dets in DETERMINERS.values():
        words += list(dets)
    words += list(PREPOSITIONS) + [w for w, _ in OPENERS] + [w for w, _ in ADVERBS]
    words += list(COLORS) + list(RECALL_WORDS) + list(ARITH_WORDS) + list(KEYWORD_WORDS)
    return list(dict.fromkeys(words))


class Vocabulary:
    """Word-level vocabulary: special tokens, punctuation, the numbers 0-99, then the lexicon.

    ``<pad>`` is id 0; ``<bos>``, ``<eos>`` and ``<sep>`` follow.
    """

    def __init__(self):
        tokens = list(SPECIALS) + list(PUNCTUATION) + list(NUMBERS) + _lexicon_words()
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate token in the TinyGrammar vocabulary")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.sep_id = (self.index[s] for s in SPECIALS)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, words) -> list[int]:
        """Map words (a list, or a whitespace-separated string) to ids; unknown words raise ``ValueError``."""
        if isinstance(words, str):
            words = words.split()
        try:
            return [self.index[w] for w in words]
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in the TinyGrammar vocabulary") from None

    def decode(self, ids) -> list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.tokens[int(i)] for i in ids]


VOCAB = Vocabulary()


# --------------------------------------------------------------------------------------------------
# Lookup tables for the parser and oracles
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NounForm:
    lemma: str
    cls: str
    number: str  # "sg", "pl" or "mass"
    register: str


@dataclass(frozen=True)
class VerbForm:
    lemma: str
    concept: str
    form: str  # "base", "3sg" or "past"
    register: str


def _noun_table() -> dict[str, NounForm]:
    table = {}
    for cls, entries in NOUNS.items():
        for singular, plural, reg in entries:
            table[singular] = NounForm(singular, cls, "sg" if plural else "mass", reg)
            if plural:
                table[plural] = NounForm(singular, cls, "pl", reg)
    return table


def _verb_table() -> dict[str, list[VerbForm]]:
    table: dict[str, list[VerbForm]] = {}
    for concept, spec in VERBS.items():
        for base, third, past, reg in spec["forms"]:
            for word, form in ((base, "base"), (third, "3sg"), (past, "past")):
                table.setdefault(word, []).append(VerbForm(base, concept, form, reg))
    return table


NOUN_FORMS = _noun_table()
VERB_FORMS = _verb_table()
ADJ_TABLE = {a: (reg, classes) for a, reg, classes in ADJECTIVES}
OPENER_REG = dict(OPENERS)
ADVERB_REG = dict(ADVERBS)


def word_register(word: str) -> str | None:
    """``"f"``, ``"i"`` or ``"n"`` for a register-bearing lexicon word, ``None`` for function words and symbols."""
    if word in NOUN_FORMS:
        return NOUN_FORMS[word].register
    if word in VERB_FORMS:
        return VERB_FORMS[word][0].register
    for table in (ADJ_TABLE,):
        if word in table:
            return table[word][0]
    if word in OPENER_REG:
        return OPENER_REG[word]
    return ADVERB_REG.get(word)


def lemma(word: str) -> str:
    """The dictionary form of a noun or verb form (``foxes`` -> ``fox``, ``saw`` -> ``see``); other words unchanged."""
    if word in NOUN_FORMS:
        return NOUN_FORMS[word].lemma
    if word in VERB_FORMS:
        return VERB_FORMS[word][0].lemma
    return word


# --------------------------------------------------------------------------------------------------
# Sentence generation
# --------------------------------------------------------------------------------------------------
def _allowed(register: str | None, reg: str) -> bool:
    """A word of register ``reg`` may appear in a sentence of ``register`` (None: any)."""
    return register is None or reg == "n" or reg == register[0]


class TinyGrammar:
    """Seeded generator of TinyGrammar documents.

    ``random_state`` is an int or a :class:`random.Random`; all draws go through it (Python's Mersenne
    Twister, stable across Python versions), so a seed fixes the stream.
    """

    def __init__(self, random_state=0, mix: dict | None = None):
        self.rng = random_state if isinstance(random_state, random.Random) else random.Random(random_state)
        self.vocab = VOCAB
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(self.mix) - set(ALL_KINDS)
        if unknown or not self.mix:
            raise ValueError(f"mix: unknown kinds {sorted(unknown)}; choose from {ALL_KINDS}")
        self._kinds = list(self.mix)
        self._weights = [float(self.mix[k]) for k in self._kinds]

    # -- pieces of a sentence ------------------------------------------------------------------------
    def _noun_phrase(self, classes, register, *, adjective_p=0.3, number=None) -> tuple[list[str], NounForm]:
        rng = self.rng
        cls = rng.choice(classes)
        singular, plural, _ = rng.choice([e for e in NOUNS[cls] if _allowed(register, e[2])])
        if plural is None:
            num, word = "mass", singular
        else:
            num = number or ("pl" if rng.random() < 0.3 else "sg")
            word = plural if num == "pl" else singular
        words = [rng.choice(DETERMINERS[num])]
        if rng.random() < adjective_p:
            adjs = [a for a, reg, cl in ADJECTIVES if _allowed(register, reg) and (cl is None or cls in cl)]
            words.append(rng.choice(adjs))
        return words + [word], NOUN_FORMS[word]

    def _verb(self, concept: str, register: str | None, subject: NounForm) -> str:
        base, third, past, _ = self.rng.choice([f for f in VERBS[concept]["forms"] if _allowed(register, f[3])])
        if self.rng.random() < 0.4:
            return past
        return base if subject.number == "pl" else third

    def sentence(self, register: str | None = None, *, opener_p=0.3, adverb_p=0.25, parts: bool = False):
        """One narrative sentence (list of words ending in ``.``) in ``register`` (``formal``/``informal``/None).

        With ``parts=True`` also returns the lemmas ``(subject, verb, object)`` (the keywords).
        """
        if register not in (None, *REGISTERS):
            raise ValueError(f"register must be one of {REGISTERS} or None, got {register!r}")
        rng = self.rng
        words: list[str] = []
        if rng.random() < opener_p:
            words += [rng.choice([w for w, reg in OPENERS if _allowed(register, reg)]), ","]
        concept = rng.choice(list(VERBS))
        spec = VERBS[concept]
        subj_words, subj = self._noun_phrase(list(spec["subj"]), register)
        verb = self._verb(concept, register, subj)
        if "obj" in spec:
            obj_words, obj = self._noun_phrase(list(spec["obj"]), register)
            tail = obj_words
        else:
            obj_words, obj = self._noun_phrase(["place"], register)
            tail = [rng.choice(spec["prep"])] + obj_words
        words += subj_words + [verb] + tail
        if rng.random() < adverb_p:
            words.append(rng.choice([w for w, reg in ADVERBS if _allowed(register, reg)]))
        words.append(".")
        if parts:
            return words, (subj.lemma, lemma(verb), obj.lemma)
        return words

    # -- documents ----------------------------------------------------------------------------------
    def narrative(self, register: str | None = None, n_sentences: int | None = None) -> list[str]:
        """1-4 sentences in one register (drawn at random when ``register`` is None)."""
        register = register or self.rng.choice(REGISTERS)
        n = n_sentences or self.rng.randint(1, 4)
        return [w for _ in range(n) for w in self.sentence(register)]

    def filler(self, n_tokens: int) -> list[str]:
        """Narrative sentences totalling exactly ``n_tokens`` words (0 or at least 6)."""
        if n_tokens != 0 and n_tokens < 6:
            raise ValueError(f"filler of {n_tokens} tokens is impossible: sentences have 6-12 tokens")
        out: list[str] = []
        remaining = n_tokens
        while remaining > 0:
            s = self.sentence()
            if (remaining <= 12 and len(s) == remaining) or (remaining > 12 and len(s) <= remaining - 6):
                out += s
                remaining -= len(s)
        return out

    def _bindings(self, n_bindings: int) -> list[tuple[str, str]]:
        boxes = self.rng.sample(range(100), n_bindings)
        return [(str(b), self.rng.choice(COLORS)) for b in boxes]

    def recall(self, n_bindings: int | None = None, filler_tokens: int | None = None, query: int | None = None,
               fmt: str = "tg"):
        """A recall episode ``box B key C . ... <filler> ? box B key C`` (``fmt="onehop"``: ``box B C . ... ? box B C``).

        Returns ``(words, answer_index, binding_answer_index)``: the positions (in ``words``) of the query's
        answer colour and of the same colour in the queried binding.
        """
        rng = self.rng
        n_bindings = n_bindings or rng.randint(1, 4)
        if filler_tokens is None:
            filler_tokens = rng.choice([0] + list(range(6, 221)))
        bindings = self._bindings(n_bindings)
        query = rng.randrange(n_bindings) if query is None else query
        words: list[str] = []
        binding_answer = -1
        for i, (box, color) in enumerate(bindings):
            words += binding_words(box, color, fmt)
            if i == query:
                binding_answer = len(words) - 2
        words += self.filler(filler_tokens)
        words += query_words(*bindings[query], fmt)
        return words, len(words) - 1, binding_answer

    def recall_dense(self, n_bindings: int | None = None, n_queries: int | None = None, max_tokens: int = 240,
                     fmt: str = "tg") -> list[str]:
        """A multi-query recall document (at most ``max_tokens`` words; see the module docstring).

        Bindings ``box B key C .`` (distinct boxes, colours with replacement; after each, a narrative
        sentence with probability 0.2), a filler block of narrative sentences whose length is drawn
        uniformly up to 150 tokens (and what the budget leaves), then queries ``? box B key C`` of bound
        boxes (before each but the first, a sentence with probability 0.25). :func:`recall_answer_positions`
        checks every answer. ``fmt="onehop"``: bindings ``box B C .``, queries ``? box B C``; the budget is
        counted in the grammar format, so a seed gives the same document with every ``key`` removed.
        """
        rng = self.rng
        k = n_bindings or rng.randint(2, 12)
        m = n_queries or rng.randint(2, 10)
        lb = lq = 5  # the grammar format's lengths, whatever fmt (same draws in both formats)
        cut = 0 if check_recall_format(fmt) == "tg" else 1  # one ``key`` fewer per binding and per query
        if lb * k + lq * m > max_tokens:
            raise ValueError(f"{k} bindings and {m} queries need more than max_tokens={max_tokens} words")
        bindings = self._bindings(k)
        reserve = lq * m
        words: list[str] = []
        for i, (box, color) in enumerate(bindings):
            words += binding_words(box, color, fmt)
            if i + 1 < k and rng.random() < 0.2:
                s = self.sentence()
                if len(words) + cut * (i + 1) + len(s) + lb * (k - i - 1) + reserve <= max_tokens:
                    words += s
        target = rng.randint(0, max(0, min(150, max_tokens - len(words) - cut * k - reserve)))
        block: list[str] = []
        while True:
            s = self.sentence()
            if len(block) + len(s) > target:
                break
            block += s
        words += block
        for j in range(m):
            if j and rng.random() < 0.25:
                s = self.sentence()
                if len(words) + cut * (k + j) + len(s) + lq * (m - j) <= max_tokens:
                    words += s
            words += query_words(*bindings[rng.randrange(k)], fmt)
        return words

    def recall_short(self, max_tokens: int = 60, fmt: str = "tg") -> list[str]:
        """A short dense recall document: :meth:`recall_dense` with 1-4 bindings, 2-6 queries, ``max_tokens`` words."""
        k = self.rng.randint(1, 4)
        m = self.rng.randint(2, 6)
        return self.recall_dense(k, m, max_tokens=max_tokens, fmt=fmt)

    def arithmetic(self, n_steps: int | None = None) -> list[str]:
        """``calc v0 (op a = v)* ; answer v``: running state modulo 100, operands 1-9."""
        rng = self.rng
        n_steps = n_steps or rng.randint(1, 8)
        value = rng.randrange(100)
        words = ["calc", str(value)]
        for _ in range(n_steps):
            op, a = rng.choice("+-"), rng.randint(1, MAX_OPERAND)
            value = (value + a) % 100 if op == "+" else (value - a) % 100
            words += [op, str(a), "=", str(value)]
        return words + [";", "answer", str(value)]

    def keywords(self, register: str | None = None) -> list[str]:
        """``keywords : k1 k2 k3 => sentence``: the lemmas of subject, verb and object, shuffled."""
        register = register or self.rng.choice(REGISTERS)
        sent, parts = self.sentence(register, opener_p=0.0, adverb_p=0.0, parts=True)
        keys = list(dict.fromkeys(parts))
        self.rng.shuffle(keys)
        return ["keywords", ":"] + keys + ["=>"] + sent

    def document(self, kind: str | None = None) -> tuple[str, list[str]]:
        """``(kind, words)`` for one document (without ``<bos>``/``<eos>``), of a kind drawn from the mix."""
        kind = kind or self.rng.choices(self._kinds, weights=self._weights)[0]
        if kind == "narrative":
            return kind, self.narrative()
        if kind == "recall":
            return kind, self.recall()[0]
        if kind == "arithmetic":
            return kind, self.arithmetic()
        if kind == "keywords":
            return kind, self.keywords()
        if kind == "recall_dense":
            return kind, self.recall_dense()
        if kind == "recall_short":
            return kind, self.recall_short()
        if kind == "recall_dense_onehop":
            return kind, self.recall_dense(fmt="onehop")
        if kind == "recall_short_onehop":
            return kind, self.recall_short(fmt="onehop")
        raise ValueError(f"unknown document kind {kind!r}; choose from {ALL_KINDS}")


# --------------------------------------------------------------------------------------------------
# Corpus streams
# --------------------------------------------------------------------------------------------------
def corpus_tokens(n_tokens: int, random_state=CANONICAL_SEED, kinds=None) -> torch.Tensor:
    """A deterministic stream of ``n_tokens`` ids: documents ``<bos> ... <eos>`` back to back (the last one cut).

    ``kinds`` restricts the mix to some document kinds (a list, or a dict of weights), e.g. for a
    per-kind validation loss.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    mix = None
    if kinds is not None:
        mix = dict(kinds) if isinstance(kinds, dict) else {k: DEFAULT_MIX.get(k, 1.0) for k in kinds}
    grammar = TinyGrammar(random_state, mix=mix)
    index = VOCAB.index
    ids: list[int] = []
    while len(ids) < n_tokens:
        _, words = grammar.document()
        ids.append(VOCAB.bos_id)
        ids.extend(index[w] for w in words)
        ids.append(VOCAB.eos_id)
    return torch.tensor(ids[:n_tokens], dtype=torch.long)


def corpus_hash(n_tokens: int = 1000, random_state=CANONICAL_SEED, kinds=None) -> str:
    """sha256 of the first ``n_tokens`` corpus ids (of the given ``kinds``) as little-endian int64 bytes."""
    ids = corpus_tokens(n_tokens, random_state, kinds)
    return hashlib.sha256(ids.numpy().astype("<i8").tobytes()).hexdigest()


def _pad_batch(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [VOCAB.pad_id] * (width - len(r)) for r in rows], dtype=torch.long)


def recall_episodes(n: int, distance: int, random_state=0, n_bindings: int = 2, fmt: str = "tg"):
    """``n`` recall episodes whose answer sits exactly ``distance`` tokens after the queried binding's answer.

    Returns ``(tokens [n, T], answer_positions [n], answer_ids [n])``: each row is ``<bos> episode``
    (right-padded with ``<pad>``), the model's prediction for ``tokens[i, pos]`` is read from the logits at
    ``pos - 1``, and ``answer_ids[i] == tokens[i, pos]``. ``fmt``: the binding format (:data:`RECALL_FORMATS`).
    """
    lb, lq = len(binding_words("0", "red", fmt)), len(query_words("0", "red", fmt))
    least = lb * (n_bindings - 1) + lq + 7  # the filler is 0 or at least 6 tokens
    if distance < least:
        raise ValueError(f"distance {distance} too small for {n_bindings} bindings (need >= {least})")
    grammar = TinyGrammar(random_state)
    rows, positions, answers = [], [], []
    for _ in range(n):
        query = grammar.rng.randrange(n_bindings)
        fixed = lb * (n_bindings - 1 - query) + lq + 1  # ".", the later bindings, the query, its answer
        filler = distance - fixed
        words, answer, binding = grammar.recall(n_bindings, filler, query, fmt=fmt)
        if answer - binding != distance:
            raise AssertionError("recall episode distance bookkeeping is wrong")
        ids = [VOCAB.bos_id] + VOCAB.encode(words)
        rows.append(ids)
        positions.append(answer + 1)
        answers.append(ids[answer + 1])
    return _pad_batch(rows), torch.tensor(positions), torch.tensor(answers)


def arithmetic_chains(n: int, n_steps: int, random_state=0):
    """``n`` chains of ``n_steps`` steps: ``(tokens [n, T], answer_positions [n], answer_ids [n])``.

    The answer is the final value after ``answer``; all rows have the same length.
    """
    grammar = TinyGrammar(random_state)
    rows = [[VOCAB.bos_id] + VOCAB.encode(grammar.arithmetic(n_steps)) for _ in range(n)]
    tokens = torch.tensor(rows, dtype=torch.long)
    pos = tokens.shape[1] - 1
    return tokens, torch.full((n,), pos), tokens[:, pos].clone()


def keyword_prompts(n: int, random_state=0, n_keywords: int | None = None, register: str | None = None):
    """``n`` keyword prompts ``keywords : k1 .. => `` with their keyword lemmas and the reference sentence.

    Returns a list of dicts ``{"prompt": words, "keywords": lemmas, "reference": sentence words}``.
    """
    grammar = TinyGrammar(random_state)
    out = []
    while len(out) < n:
        words = grammar.keywords(register)
        arrow = words.index("=>")
        keys = words[2:arrow]
        if n_keywords is not None and len(keys) != n_keywords:
            continue
        out.append({"prompt": words[: arrow + 1], "keywords": keys, "reference": words[arrow + 1 :]})
    return out


# --------------------------------------------------------------------------------------------------
# Parser and oracles
# --------------------------------------------------------------------------------------------------
def _words(sentence) -> list[str]:
    if isinstance(sentence, str):
        return sentence.split()
    if isinstance(sentence, torch.Tensor):
        return VOCAB.decode(sentence)
    if sentence and isinstance(sentence[0], int):
        return VOCAB.decode(sentence)
    return list(sentence)


def _parse_np(words: list[str], i: int) -> tuple[NounForm, int] | None:
    """Parse ``det [adj] noun`` at ``i``; return the noun and the next index, or None."""
    if i >= len(words):
        return None
    det = words[i]
    j = i + 1
    adj = None
    if j < len(words) and words[j] in ADJ_TABLE:
        adj, j = words[j], j + 1
    if j >= len(words) or words[j] not in NOUN_FORMS:
        return None
    noun = NOUN_FORMS[words[j]]
    if det not in DETERMINERS[noun.number]:
        return None
    if adj is not None and ADJ_TABLE[adj][1] is not None and noun.cls not in ADJ_TABLE[adj][1]:
        return None
    return noun, j + 1


def _verb_agrees(verb: VerbForm, subject: NounForm) -> bool:
    if verb.form == "past":
        return True
    return verb.form == ("base" if subject.number == "pl" else "3sg")


def _parse_predicate(words: list[str], i: int, verb: VerbForm, subject: NounForm) -> int | None:
    spec = VERBS[verb.concept]
    if subject.cls not in spec["subj"] or not _verb_agrees(verb, subject):
        return None
    if "obj" in spec:
        parsed = _parse_np(words, i)
        if parsed is None or parsed[0].cls not in spec["obj"]:
            return None
        return parsed[1]
    if i >= len(words) or words[i] not in spec["prep"]:
        return None
    parsed = _parse_np(words, i + 1)
    if parsed is None or parsed[0].cls != "place":
        return None
    return parsed[1]


def is_grammatical(sentence) -> bool:
    """Whether one sentence (words, ids or a string) parses as a TinyGrammar narrative sentence.

    Checks the phrase structure, determiner-noun and subject-verb number agreement, adjective and verb
    selectional restrictions; the register is *not* checked (mixed registers are grammatical).
    """
    words = _words(sentence)
    if len(words) < 2 or words[-1] != ".":
        return False
    body = words[:-1]
    i = 2 if len(body) > 2 and body[1] == "," and body[0] in OPENER_REG else 0
    if body and body[-1] in ADVERB_REG:
        body = body[:-1]
    parsed = _parse_np(body, i)
    if parsed is None or parsed[1] >= len(body):
        return False
    subject, j = parsed
    for verb in VERB_FORMS.get(body[j], []):
        end = _parse_predicate(body, j + 1, verb, subject)
        if end == len(body):
            return True
    return False


def split_sentences(words) -> list[list[str]]:
    """Split a word list at ``.`` (kept); a trailing unfinished sentence is returned too."""
    words = _words(words)
    out, current = [], []
    for w in words:
        current.append(w)
        if w == ".":
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def formality(sentence) -> float:
    """Fraction of register-marked words that are formal: ``n_f / (n_f + n_i)``; 0.5 when none is marked.

    Neutral words count for neither side. NADO's formality oracle is ``formality(s) >= 0.8`` for a
    grammatical ``s`` (see :func:`is_formal`).
    """
    regs = [word_register(w) for w in _words(sentence)]
    n_f, n_i = regs.count("f"), regs.count("i")
    return 0.5 if n_f + n_i == 0 else n_f / (n_f + n_i)


def is_formal(sentence, threshold: float = 0.8) -> bool:
    """The formality oracle: the sentence parses and at least ``threshold`` of its marked words are formal."""
    words = _words(sentence)
    return is_grammatical(words) and formality(words) >= threshold and any(word_register(w) == "f" for w in words)


def keyword_coverage(keywords, sentence) -> float:
    """Fraction of keyword lemmas that appear (inflection-insensitive) in ``sentence``."""
    keywords = _words(keywords)
    if not keywords:
        raise ValueError("keyword_coverage needs at least one keyword")
    lemmas = {lemma(w) for w in _words(sentence)}
    return sum(k in lemmas for k in keywords) / len(keywords)


def _binding_at(words: list[str], i: int, fmt: str, query: bool = False) -> tuple[str, int] | None:
    """``(box, index of its colour)`` if a binding or query body ``box B [key] C`` starts at ``words[i]``.

    "tg": as the grammar's checkers always read it (``box``, any word, ``key``, any word). "onehop": ``box``, a
    number, then a colour for a binding (so that no other text reads as one) or any word for a query (a wrong
    answer of a model's sample is scored wrong, not skipped).
    """
    if words[i] != "box" or i + 2 >= len(words):
        return None
    if fmt == "tg":
        return (words[i + 1], i + 3) if i + 3 < len(words) and words[i + 2] == "key" else None
    return (words[i + 1], i + 2) if words[i + 1] in NUMBERS and (query or words[i + 2] in COLORS) else None


def check_recall(words, fmt: str = "tg") -> bool | None:
    """For a recall episode (words, ``<bos>``/``<eos>`` optional): is the query's answer the bound colour?

    Returns None when the text has no complete query or the queried box was never bound.
    """
    check_recall_format(fmt)
    words = [w for w in _words(words) if w not in SPECIALS]
    if "?" not in words:
        return None
    q = words.index("?")
    query = _binding_at(words, q + 1, fmt, query=True) if q + 1 < len(words) else None
    if query is None:
        return None
    bound = {}
    for k in range(q):
        found = _binding_at(words, k, fmt)
        if found is not None and found[1] < q:
            bound[found[0]] = words[found[1]]
    if query[0] not in bound:
        return None
    return bound[query[0]] == words[query[1]]


def recall_answer_positions(words, fmt: str = "tg") -> list[tuple[int, bool]]:
    """Every query answer of a (dense) recall document: ``[(index in words, answer is the bound colour)]``.

    A query ``? box B key C`` of a box bound earlier (``box B key C'``) yields ``(index of C, C == C')``
    (``fmt="onehop"``: ``? box B C`` and ``box B C'``); queries of unbound boxes are skipped. Works on
    ``words`` as given (keep ``<bos>`` to get token indices).
    """
    check_recall_format(fmt)
    words = _words(words)
    bound: dict[str, str] = {}
    out = []
    for i in range(len(words)):
        is_query = i > 0 and words[i - 1] == "?"
        found = _binding_at(words, i, fmt, query=is_query)
        if found is None:
            continue
        box, c = found
        if is_query:
            if box in bound:
                out.append((c, bound[box] == words[c]))
        else:
            bound[box] = words[c]
    return out


def check_arithmetic(words) -> dict:
    """Check a chain ``calc v0 (op a = v)* ; answer v``.

    Returns ``{"n_steps", "steps_correct", "all_steps_correct", "answer_correct", "well_formed"}``;
    ``answer_correct`` means the stated answer equals the true running value (even if a step was wrong).
    """
    words = [w for w in _words(words) if w not in SPECIALS]
    result = {"n_steps": 0, "steps_correct": 0, "all_steps_correct": False, "answer_correct": False, "well_formed": False}
    if len(words) < 2 or words[0] != "calc" or not words[1].isdigit():
        return result
    true = int(words[1])
    i = 2
    while i + 3 < len(words) and words[i] in "+-" and words[i + 2] == "=":
        if not (words[i + 1].isdigit() and words[i + 3].isdigit()):
            return result
        a = int(words[i + 1])
        true = (true + a) % 100 if words[i] == "+" else (true - a) % 100
        result["n_steps"] += 1
        result["steps_correct"] += int(words[i + 3]) == true
        i += 4
    if words[i : i + 2] == [";", "answer"] and i + 2 < len(words) and words[i + 2].isdigit():
        result["well_formed"] = result["n_steps"] > 0
        result["answer_correct"] = int(words[i + 2]) == true
    result["all_steps_correct"] = result["well_formed"] and result["steps_correct"] == result["n_steps"]
    return result


def document_kind(words) -> str:
    """Which kind a document (words, ``<bos>`` optional) is, from its first word."""
    words = [w for w in _words(words) if w not in SPECIALS]
    if not words:
        return "empty"
    first = words[0]
    if first == "box":
        if len(words) > 2 and words[1] in NUMBERS and words[2] in COLORS:
            return "recall_dense_onehop"
        return "recall_dense" if words.count("?") > 1 else "recall"
    if first == "calc":
        return "arithmetic"
    if first == "keywords":
        return "keywords"
    return "narrative"
