"""Uniform spatial sampling: each adapter's token grid layout, and the lattices the uniform peer keeps."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, QWEN_FAMILIES, messages_for, model_inputs
from tcc_eval import wrap_model
from tcc_eval.adapters.base import NO_CELL, grid_cells
from tcc_eval.core import select_visual
from tcc_eval.methods import SampleView, uniform_lattice_order, uniform_scorer


def kept_cells(cells: torch.Tensor, ratio: float) -> set[tuple[int, int, int]]:
    """The (grid, row, col) cells the uniform scorer keeps at ``ratio`` of these tokens (one global budget)."""
    n = cells.shape[0]
    view = SampleView(adapter=None, input_ids=torch.zeros(n, dtype=torch.long), inputs_embeds=torch.zeros(1, n, 4),
                      attention_mask=torch.ones(1, n), position_ids=torch.arange(n)[None],
                      visual=torch.ones(n, dtype=torch.bool), groups=torch.zeros(n, dtype=torch.long), cells=cells)
    kept = select_visual(uniform_scorer()(view), ratio)
    return {tuple(cells[i].tolist()) for i in kept}


def lattice(rows: int, cols: int, keep) -> set[tuple[int, int, int]]:
    return {(0, r, c) for r in range(rows) for c in range(cols) if keep(r, c)}


def test_uniform_keeps_the_halving_lattices_of_an_even_grid():
    """50%: the checkerboard; 25%: every other row and column; 12.5%: that lattice's checkerboard; 6.25%: every
    fourth row and column. A 12 x 8 grid, so no power of two divides both sides beyond 4."""
    cells = grid_cells(0, 12, 8)
    assert kept_cells(cells, 0.5) == lattice(12, 8, lambda r, c: (r + c) % 2 == 0)
    assert kept_cells(cells, 0.25) == lattice(12, 8, lambda r, c: r % 2 == 0 and c % 2 == 0)
    assert kept_cells(cells, 0.125) == lattice(12, 8, lambda r, c: r % 2 == c % 2 == 0 and (r + c) % 4 == 0)
    assert kept_cells(cells, 0.0625) == lattice(12, 8, lambda r, c: r % 4 == 0 and c % 4 == 0)


def test_uniform_between_lattices_keeps_whole_sublattices_first():
    """75%: the checkerboard and the odd rows, three tokens of every 2 x 2 block; 37.5%, between the 25% and 50%
    lattices, keeps all of the first and lies inside the second."""
    cells = grid_cells(0, 12, 12)
    kept = kept_cells(cells, 0.75)
    assert kept == lattice(12, 12, lambda r, c: (r + c) % 2 == 0 or r % 2 == 1)
    assert all(sum((0, r + i, c + j) in kept for i in (0, 1) for j in (0, 1)) == 3
               for r in range(0, 12, 2) for c in range(0, 12, 2))
    between = kept_cells(cells, 0.375)
    assert kept_cells(cells, 0.25) < between < kept_cells(cells, 0.5) and len(between) == 54


def test_every_grid_keeps_the_same_lattice_and_cell_less_tokens_go_last():
    """Two frames and a newline-like token: each frame keeps its checkerboard, the newline goes only at 100%."""
    cells = torch.cat([grid_cells(0, 4, 4), grid_cells(1, 4, 4), NO_CELL])
    kept = kept_cells(cells, 32 / 33)
    assert (-1, -1, -1) not in kept and len(kept) == 32
    half = kept_cells(cells, 16 / 33)
    for grid in (0, 1):
        checkerboard = {(r, c) for r in range(4) for c in range(4) if (r + c) % 2 == 0}
        assert {(r, c) for g, r, c in half if g == grid} == checkerboard
    assert uniform_lattice_order(cells)[-1].item() == 32


def test_column_major_grid_keeps_the_same_places():
    """VILA1.5 emits its cells column by column: the kept places do not depend on the token order."""
    assert kept_cells(grid_cells(0, 6, 6, column_major=True), 0.25) == kept_cells(grid_cells(0, 6, 6), 0.25)


def test_uniform_and_pool_without_a_layout_name_the_adapter():
    from tcc_eval.methods import pool_merger

    class NoLayout:
        pass

    view = SampleView(adapter=NoLayout(), input_ids=torch.zeros(4, dtype=torch.long),
                      inputs_embeds=torch.zeros(1, 4, 2),
                      attention_mask=torch.ones(1, 4), position_ids=torch.arange(4)[None],
                      visual=torch.ones(4, dtype=torch.bool), groups=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="method 'uniform' needs .*NoLayout does not give .*visual_cells"):
        uniform_scorer()(view)
    with pytest.raises(ValueError, match="method 'pool' needs .*NoLayout does not give .*visual_cells"):
        pool_merger()(view, torch.tensor([0, 2]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "multi_image", "video"))
def test_cells_tile_each_grid_once_inside_one_image_or_frame(loaded, family, kind):
    """Every visual token has a cell or is a newline; each grid is a full rows x cols rectangle, every cell once,
    and lies inside one image or frame group; LLaVA-OV's cell-less tokens are exactly its newline embeddings."""
    model, processor = loaded[family]
    llm = wrap_model(model, method="none").adapter.capture_llm_inputs(model_inputs(processor, messages_for(kind)))
    cells, groups = llm.visual_cells[0], llm.visual_groups[0]
    assert cells.shape == (llm.n_visual(0), 3)
    for grid in cells[:, 0].unique().tolist():
        if grid < 0:
            continue
        members = cells[:, 0] == grid
        places = {tuple(p) for p in cells[members, 1:].tolist()}
        rows, cols = int(cells[members, 1].max()) + 1, int(cells[members, 2].max()) + 1
        assert places == {(r, c) for r in range(rows) for c in range(cols)} and len(places) == int(members.sum())
        assert groups[members].unique().numel() == 1
    embeds = llm.inputs_embeds[0, llm.visual_mask[0]]
    if family == "llava_onevision":
        is_newline = (embeds == model.model.image_newline.to(embeds)).all(dim=-1)
        assert torch.equal(is_newline, cells[:, 0] < 0) and is_newline.any()
    else:
        assert (cells[:, 0] >= 0).all()


def test_llava_onevision_crop_grid_is_transformers_unpadded_grid(loaded):
    """The crops' rows and columns (counted from the newlines) are the grid transformers unpads to."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image

    model, processor = loaded["llava_onevision"]
    inputs = model_inputs(processor, messages_for("image"))  # 112 x 84: two crops high, padded sideways
    llm = wrap_model(model, method="none").adapter.capture_llm_inputs(inputs)
    cfg = model.config
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    high, wide = get_anyres_image_grid_shape(inputs["image_sizes"][0], cfg.image_grid_pinpoints,
                                             cfg.vision_config.image_size)
    expected = unpad_image(torch.zeros(1, high * side, wide * side), inputs["image_sizes"][0]).shape[1:]
    cells = llm.visual_cells[0]
    crops = cells[cells[:, 0] == 1]
    assert (int(crops[:, 1].max()) + 1, int(crops[:, 2].max()) + 1) == tuple(expected)
    assert expected != (high * side, wide * side)  # the case where unpadding matters
    base = cells[cells[:, 0] == 0]
    assert torch.equal(base, grid_cells(0, side, side))


# --------------------------------------------------------------------------------------------- pooling


def test_nearest_kept_gives_2x2_blocks_on_the_25_percent_lattice():
    from tcc_eval.methods import nearest_kept

    cells = torch.cat([grid_cells(0, 4, 6), NO_CELL, grid_cells(1, 2, 2)])
    order = uniform_lattice_order(cells)
    kept = torch.sort(order[:6 + 1]).values  # grid 0's 2 x 3 lattice and grid 1's origin
    owner = nearest_kept(cells, kept)
    for i, (grid, row, col) in enumerate(cells.tolist()):
        if grid < 0:
            assert owner[i] == -1
        else:
            anchor = (grid, row - row % 2, col - col % 2)
            assert tuple(cells[kept[owner[i]]].tolist()) == anchor


def pool_reference(model, adapter, inputs, kept_positions: torch.Tensor) -> torch.Tensor:
    """The unpruned sequence with every visual token outside ``kept_positions`` masked out and each kept one
    carrying the mean of its 2 x 2 block (cells (row // 2, col // 2) of its grid), at the original positions."""
    llm = adapter.capture_llm_inputs(inputs)
    cells = llm.visual_cells[0]
    visual_rows = torch.nonzero(llm.visual_mask[0]).flatten()
    embeds = llm.inputs_embeds.clone()
    for i in torch.nonzero(torch.isin(visual_rows, kept_positions)).flatten().tolist():
        grid, row, col = cells[i].tolist()
        block = (cells[:, 0] == grid) & (cells[:, 1] // 2 == row // 2) & (cells[:, 2] // 2 == col // 2)
        embeds[0, visual_rows[i]] = llm.inputs_embeds[0, visual_rows[block]].mean(dim=0)
    mask = torch.zeros_like(llm.attention_mask)
    mask[0, kept_positions] = 1
    with torch.no_grad():
        return adapter.forward_from_embeds(embeds, mask, llm.position_ids).logits[0, kept_positions]


@pytest.mark.parametrize("family", FAMILIES)
def test_pool_equals_2x2_average_pooling_at_the_original_positions(loaded, family):
    """An image whose grids are all even (Qwen2-VL: 4 x 4 merged; LLaVA-OV: 4 x 4 base view and 4 x 4 crops): keeping
    exactly each grid's every-other-row-and-column lattice, pool's logits equal the 2 x 2 block means fed at the
    kept tokens' own positions with the rest masked out; keep-all pool equals vanilla exactly."""
    from conftest import random_image

    model, processor = loaded[family]
    side = 112 if family in QWEN_FAMILIES else 56
    messages = [{"role": "user", "content": [{"type": "image", "image": random_image(side, side, 4)},
                                             {"type": "text", "text": "What color is the circle?"}]}]
    inputs = model_inputs(processor, messages)
    pool = wrap_model(model, method="pool", keep_ratio=1.0)
    with torch.no_grad():
        assert torch.equal(pool.prefill_logits(**inputs), model(**inputs).logits)
    cells = pool.adapter.capture_llm_inputs(inputs).visual_cells[0]
    lattice_size = int(((cells[:, 0] >= 0) & (cells[:, 1] % 2 == 0) & (cells[:, 2] % 2 == 0)).sum())
    pool = wrap_model(model, method="pool", keep_ratio=lattice_size / cells.shape[0])
    logits = pool.prefill_logits(**inputs)[0]
    kept = pool.last_selection.kept_positions[0]
    assert pool.last_selection.visual_after[0] == lattice_size
    reference = pool_reference(model, pool.adapter, inputs, kept)
    assert (logits - reference).abs().max().item() < 1e-4
    uniform = wrap_model(model, method="uniform", keep_ratio=lattice_size / cells.shape[0])
    uniform_logits = uniform.prefill_logits(**inputs)[0]
    assert torch.equal(uniform.last_selection.kept_positions[0], kept)
    assert (uniform_logits - logits).abs().max().item() > 1e-3  # same tokens kept: pooling changed their input
