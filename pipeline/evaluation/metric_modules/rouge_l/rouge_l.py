"""ROUGE-L F-measure (stemmed, best reference) as a local ``evaluate`` module.

The math is in pipeline.evaluation.metrics.
"""

import datasets
import evaluate

from pipeline.evaluation.metrics import rouge_l


class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="ROUGE-L F-measure ×100 as rouge_score computes it (use_stemmer=True), max over references.",
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description="predictions: list of str; references: list of lists of str (one or more each).",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return rouge_l(predictions, references)
