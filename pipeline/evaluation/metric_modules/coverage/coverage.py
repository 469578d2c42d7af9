"""CommonGen concept coverage (words matched through their lemmas) as a local ``evaluate`` module."""

import datasets
import evaluate

from pipeline.evaluation.metrics import coverage


class Coverage(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean share ×100 of each example's concepts that its output mentions (inflections match).",
            citation="Lin et al., 2020. CommonGen: A Constrained Text Generation Challenge.",
            inputs_description="predictions: list of str; concepts: list of lists of str (the example's concepts).",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "concepts": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions: list[str], concepts: list[list[str]]) -> dict[str, float]:
        return coverage(predictions, concepts)
