"""Cut finding on hand-made graphs: the pure core of the converter."""
from hypothesis import given, strategies as st

from converter.graph import single_tensor_cuts, spread_by_compute


def cut_tensors(nodes, source=0, sink=None):
    ins = [n[0] for n in nodes]
    outs = [n[1] for n in nodes]
    sink = outs[-1][0] if sink is None else sink
    return [t for _, t in single_tensor_cuts(ins, outs, source, sink)]


def test_chain_every_tensor_is_a_cut():
    nodes = [((0,), (1,)), ((1,), (2,)), ((2,), (3,))]
    assert cut_tensors(nodes) == [0, 1, 2]


def test_residual_block_hides_its_inside():
    # 1 -> a(2) -> b(3); add(1, 3) -> 4 -> 5
    nodes = [((0,), (1,)), ((1,), (2,)), ((2,), (3,)), ((1, 3), (4,)), ((4,), (5,))]
    assert cut_tensors(nodes) == [0, 1, 4]


def test_parallel_branches_any_topological_order():
    # inception-like: 1 feeds three branches that concatenate
    nodes = [((0,), (1,)), ((1,), (2,)), ((1,), (3,)), ((3,), (4,)), ((1,), (5,)),
             ((2, 4, 5), (6,)), ((6,), (7,))]
    assert cut_tensors(nodes) == [0, 1, 6]


def test_dead_branch_is_ignored():
    # tensor 9 is computed but never reaches the output
    nodes = [((0,), (1,)), ((1,), (9,)), ((1,), (2,)), ((2,), (3,))]
    assert cut_tensors(nodes) == [0, 1, 2]


def test_skip_from_input_leaves_only_input():
    nodes = [((0,), (1,)), ((1,), (2,)), ((0, 2), (3,)), ((3,), (4,))]
    assert cut_tensors(nodes) == [0, 3]


def test_multi_output_node_with_one_used_output():
    nodes = [((0,), (1, 2)), ((1,), (3,)), ((3,), (4,))]
    assert cut_tensors(nodes) == [0, 1, 3]


@st.composite
def chains_with_skips(draw):
    """A chain 0..n with random skip edges; a tensor is a cut iff no skip jumps over it."""
    n = draw(st.integers(2, 12))
    skips = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=5))
    skips = [(a, b) for a, b in skips if b > a + 1]
    nodes = []
    for i in range(1, n + 1):
        extra = tuple(a for a, b in skips if b == i)
        nodes.append(((i - 1, *extra), (i,)))
    expected = [t for t in range(n) if not any(a < t < b for a, b in skips)]
    return nodes, expected


@given(chains_with_skips())
def test_cuts_match_brute_force_on_random_skips(case):
    nodes, expected = case
    assert cut_tensors(nodes) == expected


def test_spread_by_compute_keeps_input_and_spreads():
    cum = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    # ties go to the later split (post-activation tensors compress better)
    assert spread_by_compute(cum, 100, 4) == [0, 3, 5, 8]
    assert spread_by_compute(cum, 100, 50) == list(range(10))


def test_spread_by_compute_prefers_small_tensors_within_each_slot_and_keeps_the_last_small_one():
    cum = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    sizes = [9, 8, 1, 8, 8, 8, 2, 8, 8, 3, 8]
    # slots of 25: targets 25, 50, 75 -> windows [12.5, 37.5], [37.5, 62.5], [62.5, end]
    assert spread_by_compute(cum, 100, 4, sizes=sizes) == [0, 2, 6, 9]
    # slots of 20: the window [30, 50] is all size 8, so the one closest to 40 wins
    assert spread_by_compute(cum, 100, 5, sizes=sizes) == [0, 2, 4, 6, 9]


def test_spread_by_compute_with_sizes_never_returns_more_than_count():
    cum = list(range(0, 100, 3))
    sizes = [100 - c for c in cum]
    for count in range(1, 12):
        got = spread_by_compute(cum, 99, count, sizes=sizes)
        assert got[0] == 0 and len(got) <= count and got == sorted(set(got))


def test_equivalent_cuts_offer_one_of_each_pair_with_the_same_information():
    from converter.graph import equivalent_cuts

    kinds = ["input", "Rescaling", "Conv2D", "BatchNormalization", "ReLU", "ZeroPadding2D",
             "DepthwiseConv2D", "BatchNormalization", "Dropout", "Add", "BatchNormalization"]
    follows = [False, True, True, True, True, True, True, True, True, True, False]
    assert equivalent_cuts(kinds, follows) == {
        1: 0,  # the input is kept: cloud-only
        2: 3,  # the conv's output folds into its BN's
        5: 4,  # padding adds zeros only
        6: 7,
        8: 7,  # dropout is the identity at inference
    }  # the last BN does not follow the cut before it (a residual join): kept


def test_equivalent_cuts_resolve_chains_to_the_cut_that_is_kept():
    from converter.graph import equivalent_cuts

    kinds = ["input", "Conv2D", "BatchNormalization", "BatchNormalization", "Flatten", "Reshape"]
    assert equivalent_cuts(kinds, [False] + [True] * 5) == {1: 3, 2: 3, 4: 3, 5: 3}
    assert equivalent_cuts(["input", "Conv2D"], [False, True]) == {}


def test_a_tail_input_never_takes_a_layer_name():
    from converter.build import _fresh_name

    assert _fresh_name("activation", {"conv", "bn"}) == "activation"
    assert _fresh_name("activation", {"activation"}) == "activation_in"
    assert _fresh_name("activation", {"activation", "activation_in"}) == "activation_in_1"
