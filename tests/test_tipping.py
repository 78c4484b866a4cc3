"""The tipping-point rules (utils/tipping.py): the reference's rule kept as it is, the plateau rule on hand-made curves
and on curves recorded by studies/tipping_study.py (student confidence and training fit per epoch, rounded to 4
decimals), where the reference rule splits before the networks have learnt and the plateau rule waits."""
import numpy as np
import pytest

from utils.bkd import find_tipping_epoch
from utils.tipping import (FIT_SHARE, LEARNT_SHARE, MARGIN, PATIENCE, Tipping, find_tipping,
                           history_slots, noise_level, plateau_rule, premature_split)

# Recorded by `python studies/tipping_study.py record` (one torch thread each, torch 2.14.1, 2-core CPU): synthetic label
# sets and scikit-learn's digits with 25 % wrong labels, on the demo's schedule (24 epochs, lr 0.1 x0.1 every 5) and
# the long one (48 epochs, lr 0.1 x0.1 at 32). Each is (student confidence, training fit) per epoch.
CLEAN_DEMO_SEED_2 = (  # demo schedule, synthetic_clean/synthetic_clean_seed_2
    [0.1519, 0.1923, 0.2301, 0.2495, 0.2502, 0.2351, 0.2449, 0.2510, 0.2557, 0.2591, 0.2612, 0.2623, 0.2615,
     0.2635, 0.2630, 0.2633, 0.2636, 0.2634, 0.2630, 0.2626, 0.2621, 0.2626, 0.2626, 0.2621],
    [0.1766, 0.3709, 0.5564, 0.7106, 0.7776, 0.8122, 0.8365, 0.8447, 0.8486, 0.8561, 0.8593, 0.8571, 0.8566,
     0.8612, 0.8575, 0.8591, 0.8569, 0.8602, 0.8587, 0.8602, 0.8626, 0.8587, 0.8589, 0.8576])

CLEAN_DEMO_SEED_3 = (  # demo schedule, synthetic_clean/synthetic_clean_seed_3
    [0.1584, 0.1868, 0.2219, 0.2739, 0.2563, 0.2677, 0.2733, 0.2748, 0.2785, 0.2819, 0.2813, 0.2825, 0.2836,
     0.2844, 0.2844, 0.2845, 0.2856, 0.2852, 0.2843, 0.2854, 0.2847, 0.2849, 0.2849, 0.2853],
    [0.2015, 0.3150, 0.4927, 0.6795, 0.7370, 0.8022, 0.8195, 0.8300, 0.8372, 0.8446, 0.8492, 0.8478, 0.8473,
     0.8497, 0.8520, 0.8472, 0.8535, 0.8501, 0.8492, 0.8501, 0.8510, 0.8522, 0.8506, 0.8497])

CLEAN_LONG_SEED_1 = (  # long schedule, synthetic_clean/synthetic_clean_seed_1
    [0.1551, 0.1830, 0.2139, 0.2125, 0.2490, 0.2470, 0.2488, 0.2479, 0.2523, 0.2569, 0.2399, 0.2418, 0.2557,
     0.2413, 0.2524, 0.2213, 0.2201, 0.2381, 0.2483, 0.2438, 0.2514, 0.2509, 0.2414, 0.2507, 0.2460, 0.2370,
     0.2424, 0.2404, 0.2399, 0.2413, 0.2448, 0.2383, 0.2339, 0.2366, 0.2390, 0.2408, 0.2407, 0.2405, 0.2427,
     0.2443, 0.2455, 0.2455, 0.2482, 0.2476, 0.2487, 0.2503, 0.2497, 0.2511],
    [0.1941, 0.3079, 0.4702, 0.5350, 0.6970, 0.7696, 0.8135, 0.8348, 0.8570, 0.8731, 0.8312, 0.8732, 0.8598,
     0.8905, 0.8984, 0.8703, 0.9010, 0.9114, 0.9133, 0.9183, 0.8984, 0.8871, 0.9114, 0.9239, 0.8962, 0.9181,
     0.9327, 0.9298, 0.9333, 0.9188, 0.8933, 0.9270, 0.9332, 0.9392, 0.9406, 0.9402, 0.9427, 0.9435, 0.9433,
     0.9422, 0.9450, 0.9481, 0.9473, 0.9491, 0.9448, 0.9467, 0.9483, 0.9492])

AGGRE_LONG_SEED_1 = (  # long schedule, synthetic_aggre/synthetic_aggre_seed_1
    [0.1509, 0.1713, 0.1957, 0.2389, 0.2799, 0.3083, 0.3464, 0.3763, 0.3979, 0.4308, 0.4300, 0.4545, 0.4718,
     0.4744, 0.4886, 0.4878, 0.4997, 0.5096, 0.5282, 0.5303, 0.5277, 0.5396, 0.5577, 0.5688, 0.5684, 0.5761,
     0.5984, 0.5972, 0.6063, 0.6077, 0.6182, 0.6314, 0.6365, 0.6425, 0.6478, 0.6481, 0.6570, 0.6585, 0.6615,
     0.6606, 0.6668, 0.6683, 0.6711, 0.6707, 0.6759, 0.6775, 0.6792, 0.6803],
    [0.1665, 0.2554, 0.3902, 0.5516, 0.6288, 0.6740, 0.7132, 0.7167, 0.7261, 0.7578, 0.7608, 0.7765, 0.7841,
     0.7919, 0.7917, 0.7917, 0.7967, 0.7989, 0.8116, 0.8094, 0.8038, 0.8091, 0.8234, 0.8246, 0.8201, 0.8241,
     0.8312, 0.8323, 0.8330, 0.8339, 0.8347, 0.8402, 0.8428, 0.8458, 0.8495, 0.8480, 0.8522, 0.8519, 0.8529,
     0.8521, 0.8519, 0.8546, 0.8552, 0.8553, 0.8571, 0.8566, 0.8566, 0.8566])

WORST_DEMO_SEED_1 = (  # demo schedule, synthetic_worst/synthetic_worst_seed_1
    [0.1566, 0.1860, 0.2056, 0.2189, 0.2507, 0.2642, 0.2702, 0.2770, 0.2838, 0.2907, 0.2943, 0.2949, 0.2941,
     0.2946, 0.2965, 0.2970, 0.2970, 0.2979, 0.2966, 0.2979, 0.2971, 0.2987, 0.2975, 0.2973],
    [0.1317, 0.1824, 0.2305, 0.2727, 0.3210, 0.3593, 0.3708, 0.3816, 0.3853, 0.3939, 0.3977, 0.4003, 0.4000,
     0.3992, 0.4016, 0.4022, 0.4038, 0.4021, 0.4038, 0.4021, 0.4022, 0.4035, 0.4036, 0.4016])

DIGITS25_LONG_SEED_0 = (  # long schedule, digits_25/npz_given_seed_0
    [0.1421, 0.2261, 0.3108, 0.3861, 0.4320, 0.4290, 0.4554, 0.4848, 0.5159, 0.5319, 0.5479, 0.5618, 0.5664,
     0.5522, 0.5668, 0.5796, 0.5890, 0.5827, 0.6007, 0.5953, 0.5944, 0.6071, 0.6156, 0.6148, 0.6131, 0.6206,
     0.6161, 0.6297, 0.6459, 0.6462, 0.6250, 0.6359, 0.6485, 0.6475, 0.6541, 0.6538, 0.6594, 0.6569, 0.6577,
     0.6650, 0.6660, 0.6709, 0.6710, 0.6724, 0.6724, 0.6706, 0.6779, 0.6781],
    [0.1678, 0.3575, 0.4801, 0.5329, 0.5674, 0.5837, 0.6039, 0.6182, 0.6262, 0.6487, 0.6481, 0.6463, 0.6466,
     0.6529, 0.6549, 0.6674, 0.6546, 0.6704, 0.6783, 0.6694, 0.6808, 0.6767, 0.6768, 0.6844, 0.6865, 0.6838,
     0.6884, 0.6918, 0.6998, 0.6912, 0.6855, 0.6945, 0.7039, 0.6963, 0.7047, 0.7004, 0.7111, 0.7031, 0.7099,
     0.7094, 0.7090, 0.7134, 0.7093, 0.7071, 0.7072, 0.7173, 0.7163, 0.7164])


def first_split(rule, curves):
    """(tipping epoch, the epoch it is found at) of a rule run epoch by epoch, as the training loop runs it."""
    confidence, fit = curves
    for epoch in range(len(confidence)):
        tipping = find_tipping(rule, confidence[:epoch + 1], fit[:epoch + 1])
        if tipping is not None:
            return tipping.epoch, epoch
    return None, None


@pytest.mark.parametrize("curves, reference, plateau", [
    (CLEAN_DEMO_SEED_2, (4, 6), (13, 15)),  # a dip in the rise: the reference splits at epoch 4 (84 % learnt)
    (CLEAN_DEMO_SEED_3, (3, 5), (13, 13)),  # a spike in the rise: the reference splits at epoch 3 (75 %)
    (CLEAN_LONG_SEED_1, (4, 6), (20, 21)),  # the confidence stalls at 0.25 while the training fit still climbs
    (AGGRE_LONG_SEED_1, (None, None), (30, 30)),  # a steady rise: no peak for the reference, a plateau late on
    (WORST_DEMO_SEED_1, (11, 13), (15, 15)),  # both wait for the learning-rate steps to end the rise
    (DIGITS25_LONG_SEED_0, (18, 20), (32, 32)),  # a real image source: a wiggle of the rise, and the rise's end
])
def test_rules_on_recorded_curves(curves, reference, plateau):
    assert first_split("reference", curves) == reference
    assert first_split("plateau", curves) == plateau


@pytest.mark.parametrize("curves, premature", [(CLEAN_DEMO_SEED_2, True), (CLEAN_DEMO_SEED_3, True),
                                               (CLEAN_LONG_SEED_1, True), (WORST_DEMO_SEED_1, False),
                                               (DIGITS25_LONG_SEED_0, False)])
def test_premature_reference_splits_are_named(curves, premature):
    """premature_split names the reference rule's early splits (learning clearly still rising); the plateau rule's
    splits of the same learnt curves carry no warning."""
    confidence, fit = curves
    found = first_split("reference", curves)[1]
    warning = premature_split(confidence[:found + 1], fit[:found + 1], 10)
    assert (warning is not None) == premature, warning
    if premature:
        assert warning.startswith(f"learning was still rising when the split was made (epoch {found})")
    found = first_split("plateau", curves)[1]
    assert premature_split(confidence[:found + 1], fit[:found + 1], 10) is None


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_flat_curves_split_by_the_plateau_rule_are_premature(num_classes):
    """Nothing learnt (a learning rate far too small): the curves are flat at chance, the plateau rule splits within
    a few epochs, and the split says it looks premature. The same curves lifted to where learnt
    networks level off do not warn."""
    rng = np.random.default_rng(4)
    chance = 1 / num_classes
    confidence = (chance + 0.01 + rng.normal(0, 0.001, 12)).tolist()
    flat_fit = (chance + rng.normal(0, 0.001, 12)).tolist()
    tipping, found = first_split("plateau", (confidence, flat_fit))
    assert found is not None and found <= 8
    warning = premature_split(confidence[:found + 1], flat_fit[:found + 1], num_classes)
    assert warning is not None and warning.startswith(f"nothing was learnt yet when the split was made (epoch {found})")
    assert f"chance ({chance:.4f}, {num_classes} classes)" in warning
    learnt_fit = (np.r_[np.linspace(chance, 0.7, 4), np.full(8, 0.7)] + rng.normal(0, 0.001, 12)).tolist()
    found = first_split("plateau", (confidence, learnt_fit))[1]
    assert premature_split(confidence[:found + 1], learnt_fit[:found + 1], num_classes) is None


@pytest.mark.parametrize("num_classes, line", [(2, 0.536), (10, 0.126), (100, 0.0158)])
def test_the_learnt_share_is_the_line(num_classes, line):
    """Just below the line a plateau split warns, just above it it does not: a tenth of the way from chance to 1 on
    a log scale."""
    assert (1 / num_classes) ** (1 - LEARNT_SHARE) == pytest.approx(line, abs=5e-4)
    confidence = [0.15] * 8
    assert premature_split(confidence, [line - 0.001] * 8, num_classes) is not None
    assert premature_split(confidence, [line + 0.001] * 8, num_classes) is None


@pytest.mark.parametrize("num_classes, fit", [(100, 0.05), (10, 0.15)])
def test_healthy_plateaus_of_many_classes_or_mostly_wrong_labels_do_not_warn(num_classes, fit):
    """A real plateau can fit the given labels little: 100 classes (CIFAR-100N), or most labels wrong. With the line
    a tenth of the way from chance on a linear scale (0.109 and 0.19 here), these warned that nothing was learnt."""
    rng = np.random.default_rng(5)
    confidence = (0.4 + rng.normal(0, 0.001, 12)).tolist()
    learnt = (np.r_[np.linspace(1 / num_classes, fit, 4), np.full(8, fit)] + rng.normal(0, 0.0005, 12)).tolist()
    assert premature_split(confidence, learnt, num_classes) is None


def test_reference_rule_is_find_tipping_epoch():
    """--tipping_rule reference is the reference's rule, whatever the training fit does."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        x = rng.random(rng.integers(1, 16)).tolist()
        found = find_tipping("reference", x, rng.random(len(x)).tolist())
        assert (None if found is None else found.epoch) == find_tipping_epoch(x)
    assert find_tipping("none", x, x) is None


def test_noise_level_ignores_a_steady_rise():
    rng = np.random.default_rng(1)
    ramp = np.linspace(0.2, 0.6, 2000)
    assert noise_level(ramp) == pytest.approx(0.0, abs=1e-12)
    noisy = ramp + rng.normal(0, 0.01, ramp.size)
    assert noise_level(noisy) == pytest.approx(0.01, rel=0.1)  # the rise does not count as noise
    assert noise_level([0.3, 0.4]) == 0.0  # no second difference yet


def test_plateau_waits_for_both_curves():
    rng = np.random.default_rng(2)
    rising = np.linspace(0.1, 0.5, 30) + rng.normal(0, 0.002, 30)
    flat = 0.5 + rng.normal(0, 0.002, 30)
    learnt = np.r_[np.linspace(0.1, 0.8, 10), 0.8 + rng.normal(0, 0.001, 20)]  # a training fit: a rise, then level
    assert plateau_rule(rising, rising) is None  # still learning
    assert plateau_rule(flat, rising) is None  # the confidence stalls, the labels are still being learnt
    assert plateau_rule(rising, learnt) is None
    tipping = plateau_rule(flat, learnt)
    assert isinstance(tipping, Tipping) and 30 - 1 - PATIENCE <= tipping.epoch <= 29
    assert tipping.epoch == 29 - PATIENCE + int(np.argmax(flat[-PATIENCE - 1:]))  # the highest of the last epochs
    assert plateau_rule(flat[:5], learnt[:5]) is None  # fewer than 6 epochs: no rule decides


def test_plateau_evidence_tells_a_turn_from_a_plateau():
    rng = np.random.default_rng(3)
    fit = np.r_[np.linspace(0.1, 0.8, 5), 0.8 + rng.normal(0, 0.001, 16)]
    plateau = np.r_[np.linspace(0.1, 0.3, 5), 0.3 + rng.normal(0, 0.001, 16)]
    turn = np.r_[np.linspace(0.1, 0.3, 5), 0.3 + rng.normal(0, 0.001, 11), [0.32, 0.30, 0.28, 0.26, 0.25]]
    assert plateau_rule(plateau, fit).evidence.endswith("a plateau")
    tipping = plateau_rule(turn, fit)
    assert tipping.epoch == 16 and tipping.evidence.endswith("a turn")
    assert f"within {MARGIN:g} noise levels" in tipping.evidence and f"within {FIT_SHARE:.0%} of its rise" in tipping.evidence


@pytest.mark.parametrize("rule", ["plateau", "reference"])
def test_history_slots_keep_the_tipping_epoch(rule):
    """The run's ring of per-sample records (epoch e in slot e % history_slots, as the training script keeps them)
    still holds the tipping epoch's when the rule finds it, on 300 curves of every shape: rises, turns, plateaus,
    noise. The plateau rule finds a tipping epoch up to PATIENCE epochs back, so it needs PATIENCE + 1 slots."""
    n_slots = history_slots(rule)
    rng = np.random.default_rng(0)
    found_back = set()
    for trial in range(300):
        n = 30
        rise = np.minimum(np.arange(n), rng.integers(3, 25)) * rng.uniform(0.005, 0.05)  # rises, then a plateau
        turn = -np.maximum(np.arange(n) - rng.integers(5, 30), 0) * rng.uniform(0, 0.02)  # and may turn down
        confidence = 0.3 + rise + turn + rng.normal(0, rng.uniform(0.0005, 0.01), n)
        fit = 0.2 + 2 * rise + rng.normal(0, 0.001, n)
        held = {}
        for epoch in range(n):
            held[epoch % n_slots] = epoch
            tipping = find_tipping(rule, confidence[:epoch + 1], fit[:epoch + 1])
            if tipping is not None:
                assert held[tipping.epoch % n_slots] == tipping.epoch, (trial, tipping.epoch, epoch)
                found_back.add(epoch - tipping.epoch)
                break
    assert max(found_back) == (PATIENCE if rule == "plateau" else 2)  # the rule's deepest look back was reached
    assert history_slots("none") == 4  # a run that never splits keeps the minimum


def test_a_split_in_the_first_epochs_is_premature():
    warning = premature_split([0.15, 0.19, 0.23, 0.25, 0.24, 0.23], [0.2, 0.4, 0.6, 0.7, 0.75, 0.78], 10)
    assert warning is not None and "(epoch 5)" in warning
