import io
import math
import pickle

import numpy as np
import pytest
from scipy import stats

from papers.tubelex import tubelex as tx


def test_plain_unpickler_loads_plain_data_and_refuses_classes():
    data = {("A", "N"): {"FAM": 632, "CNC": None}, "list": [1, 2.5, "x"]}
    assert tx.PlainUnpickler(io.BytesIO(pickle.dumps(data))).load() == data
    with pytest.raises(pickle.UnpicklingError):
        tx.PlainUnpickler(io.BytesIO(pickle.dumps(np.arange(3)))).load()


def test_mrc_familiarity_follows_the_extraction_rules():
    records = {
        ("CAT", "N"): {"FAM": 600, "CNC": 500},
        ("CAT", "V"): {"FAM": 300, "CNC": 0},          # later entry of the same word: ignored
        ("DOG", "N"): {"FAM": None, "CNC": None},      # all variables missing: not an entry
        ("DOG", "V"): {"FAM": 550},
        ("EEL", "N"): {"FAM": 0, "IMG": 400},          # first entry without FAM: no familiarity
        ("EEL", "V"): {"FAM": 420},
    }
    assert tx.mrc_familiarity(records) == {"cat": 6.0, "dog": 5.5}
    with pytest.raises(ValueError):
        tx.mrc_familiarity({"CAT": {"FAM": 1}})


def test_subtlex_counts_skip_header_and_merge_case():
    rows = {"\ufeffWord": {"FREQcount": "FREQcount"}, "The": {"FREQcount": "3"}, "the": {"FREQcount": "7"}}
    assert tx.subtlex_us_counts(rows) == {"the": 10}


def test_item_frequency_rarest_token_unless_whole_string_is_listed():
    lookup = tx.wordfreq_lookup({"ice": 1e-4, "cream": 1e-5, "ice cream": 2e-5})
    assert tx.item_frequency("Ice Cream", lookup, str.split) == (2e-5, False)
    lookup = tx.wordfreq_lookup({"ice": 1e-4, "cream": 1e-5})
    assert tx.item_frequency("ice cream", lookup, str.split) == (1e-5, False)
    assert tx.item_frequency("ice zzz", lookup, str.split) == (tx.WORDFREQ_MISSING, True)
    assert tx.item_frequency("ｃａｔ", tx.wordfreq_lookup({"cat": 0.5}), str.split) == (0.5, False)  # NFKC


def test_laplace_lookup_exact():
    lookup = tx.laplace_lookup({"a": 3, "b": 1})      # N = 4, V = 2
    assert lookup("a") == (4 / 6, False)
    assert lookup("zzz") == (1 / 6, True)
    with pytest.raises(ValueError):
        tx.laplace_lookup({})


def test_frequency_correlation_matches_scipy_on_log10():
    freqs = {"a": 0.1, "b": 0.01, "c": 0.001, "d": 1e-5}
    norm = {"a": 6.0, "b": 5.5, "c": 3.0, "d": 2.5, "e": 1.0}
    out = tx.frequency_correlation(norm, tx.wordfreq_lookup(freqs), tx.regex_tokenize)
    log_f = np.log10([0.1, 0.01, 0.001, 1e-5, 1e-9])
    assert out["n"] == 5 and out["n_missing"] == 1
    assert out["r"] == pytest.approx(stats.pearsonr(log_f, list(norm.values()))[0], abs=1e-12)


def test_steiger_z_zero_for_equal_correlations_and_sign():
    assert tx.steiger_z(0.5, 0.5, 0.3, 100) == (0.0, 1.0)
    z, p = tx.steiger_z(0.6, 0.4, 0.5, 200)
    assert z > 0 and 0 < p < 1
    # independent predictors (r_23 = 0) at r = 0: Z = (atanh a − atanh b) √(n−3) / √2
    z0, _ = tx.steiger_z(0.2, -0.2, 0.0, 103)
    assert z0 == pytest.approx(2 * math.atanh(0.2) * 10 / math.sqrt(2), rel=1e-12)
    with pytest.raises(ValueError):
        tx.steiger_z(1.0, 0.2, 0.1, 10)


def test_simulator_shapes_determinism_and_limits():
    p = tx.zipf_exposure(100)
    assert p.sum() == pytest.approx(1.0) and np.all(np.diff(p) < 0)
    assert np.array_equal(tx.sample_corpus(p, 1000, 3), tx.sample_corpus(p, 1000, 3))
    assert tx.sample_corpus(p, 1000, 3).sum() == 1000
    assert np.array_equal(tx.shifted_register(p, 0.0, 1), p)
    fam = tx.familiarity_from_exposure(p, 0.0, 0)
    # noiseless norm and exact frequencies: Spearman 1 (monotone); counts from a huge corpus: r close to oracle
    assert stats.spearmanr(fam, p)[0] == pytest.approx(1.0)
    counts = tx.sample_corpus(p, 10**8, 0)
    oracle = np.corrcoef(np.log10(p), fam)[0, 1]
    assert abs(tx.corpus_correlation(counts, fam) - oracle) < 0.01
    with pytest.raises(ValueError):
        tx.sample_corpus(p, 0, 0)
    with pytest.raises(ValueError):
        tx.zipf_exposure(1)
