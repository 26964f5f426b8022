"""A paid stage stops once its documents cost the batch's budget: the rest are postponed (not failed),
what is left goes to the next stage, and a stage that pays nothing ignores the budget."""

from __future__ import annotations

from dataclasses import replace

from include.contract import DocumentRef
from include.stages import STAGES
from include.stages.base import StageInput, run_stage
from include.stages.execution import run_inline


class CostsTenCents:
    def __init__(self, settings) -> None:
        pass

    def __call__(self, doc, part):
        return {"cost_usd": 0.10}


def _stage(pays: bool):
    return replace(STAGES["embed"], split=lambda doc, settings: [{"units": 1}], worker=CostsTenCents,
                   assemble=lambda ctx, payloads: ({}, {"cost_usd": sum(p["cost_usd"] for p in payloads)}),
                   pays=lambda settings: pays, reusable=False, gate=None)  # its output is no embedding


def _items(count: int) -> list[StageInput]:
    return [StageInput(DocumentRef(doc_id=f"doc-{n}", source_uri=f"s3://documents/inbox/doc-{n}.pdf",
                                   content_sha256="0" * 64, size_bytes=1)) for n in range(count)]


def test_a_paid_stage_stops_at_its_budget_and_postpones_the_rest(settings):
    result = run_stage(_stage(pays=True), settings, _items(5), batch_id="b", executor=run_inline, budget_usd=0.25)
    assert [o.status for o in result.documents] == ["succeeded"] * 3 + ["postponed"] * 2
    assert result.postponed[0].error.startswith("s3://documents/inbox/doc-3.pdf: postponed at embed: the batch's "
                                                "share of the run's budget for paid calls")
    assert result.budget_usd_left == 0.0 and result.status == "succeeded"

    nothing_left = run_stage(_stage(pays=True), settings, _items(2), batch_id="b", executor=run_inline,
                             budget_usd=result.budget_usd_left)
    assert [o.status for o in nothing_left.documents] == ["postponed", "postponed"]


def test_a_stage_that_pays_nothing_ignores_the_budget_and_passes_it_on(settings):
    result = run_stage(_stage(pays=False), settings, _items(3), batch_id="b", executor=run_inline, budget_usd=0.0)
    assert [o.status for o in result.documents] == ["succeeded"] * 3 and result.budget_usd_left == 0.0
    unlimited = run_stage(_stage(pays=True), settings, _items(3), batch_id="b", executor=run_inline)
    assert len(unlimited.succeeded) == 3 and unlimited.budget_usd_left is None


def test_on_ray_the_pipeline_stops_at_the_budget_and_the_rest_is_postponed(settings, ray_local):
    import sys

    import ray

    from include.stages.execution import run_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not shipped to workers
    result = run_stage(_stage(pays=True), settings, _items(6), batch_id="b", executor=run_on_ray, budget_usd=0.25)
    assert [o.status for o in result.documents] == ["succeeded"] * 3 + ["postponed"] * 3
    assert result.budget_usd_left == 0.0
