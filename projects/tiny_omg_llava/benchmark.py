"""Figures and training curves of a tiny synthetic run (``train_tiny.py``'s work dir).

    python projects/tiny_omg_llava/benchmark.py [--work-dir work_dirs/tiny_synthetic]

Prints wall time and peak memory of every step, the binding part's tries and the language-stage
LLM's binding checks (``name_binding.py``), the first / last logged losses of the four
trainings, the held-out referring-segmentation metrics (also per expression kind, the share of
answers repeating the expression, and the OMG-Seg pre-stage's own referring lookups:
``referring_figures.py``), the region-question accuracies next to chance and the colour / shape
accuracy per prompt kind (point, box, mask: ``prompt_qa.py``); writes ``curves.png`` (losses per
iteration: raw logs faint, moving averages of 10 logs bold) and ``figures.json``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from name_binding import CHECK_NAMES  # noqa: E402
from referring_figures import (evaluate_pre_stage, format_kind_figures, kind_figures,  # noqa: E402
                               read_predictions, repeated_expression_share)

STAGES = {'language': 'language stage (LLM)', 'omg_seg': 'OMG-Seg pre-stage',
          'pretrain': 'OMG-LLaVA pretrain', 'finetune': 'OMG-LLaVA finetune'}


def read_scalars(stage_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``loss*`` series of the newest run in an mmengine work dir: name → [(iteration, value)]."""
    runs = sorted(glob.glob(os.path.join(stage_dir, '*', 'vis_data', 'scalars.json')))
    if not runs:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {stage_dir}: was the stage '
                                'trained there?')
    series = defaultdict(list)
    with open(runs[-1], encoding='utf-8') as f:
        for line in f:
            row = json.loads(line)
            for key, value in row.items():
                if key.startswith('loss'):
                    series[key].append((row['step'], value))
    return dict(series)


def _read_json(path: str) -> dict:
    with open(path, encoding='utf-8') as f:
        return json.load(f)


# logged points per moving-average window in the plot (batches mix tasks, so single logs are noisy)
SMOOTHING = 10


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(values))]


def plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4))
    for ax, (stage, series) in zip(list(axes) if len(curves) > 1 else [axes], curves.items()):
        for name, points in sorted(series.items()):
            steps, values = [p[0] for p in points], [p[1] for p in points]
            raw, = ax.plot(steps, values, linewidth=0.8, alpha=0.3)
            ax.plot(steps, moving_average(values, SMOOTHING), color=raw.get_color(), label=name,
                    linewidth=1.6)
        ax.set_title(STAGES.get(stage, stage))
        ax.set_xlabel('iteration')
        ax.set_yscale('log')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def referring_breakdown(work_dir: str) -> dict:
    """Per-kind figures of the held-out referring predictions, the share of answers repeating the
    expression and, when the pre-stage exported its referring encoder, the pre-stage's own lookups
    on the same expressions."""
    from omg_llava.evaluation.runner import PREDICTIONS_FILE
    from omg_llava.models.omg_seg_trainer import REFERRING_QUERIES_FILE
    rows = read_predictions(os.path.join(work_dir, 'test', 'refseg', PREDICTIONS_FILE))
    stage_dir = os.path.join(work_dir, 'omg_seg')
    pre_stage = None
    if os.path.isfile(os.path.join(stage_dir, REFERRING_QUERIES_FILE)):
        pre_stage = evaluate_pre_stage(stage_dir,
                                       os.path.join(work_dir, 'data', 'synthetic_shapes'))
    return dict(by_kind=kind_figures((r['sentence'], r['intersection'], r['union']) for r in rows),
                repeated_expression=repeated_expression_share(rows), pre_stage=pre_stage)


def name_binding_figures(work_dir: str) -> dict | None:
    """The binding part's tries (``name_binding/binding_checks.json``, without their loss logs)
    and the same checks of the language-stage LLM (``llm/``); ``None`` for a run without a binding
    part (``--committed-stages``)."""
    path = os.path.join(work_dir, 'name_binding', 'binding_checks.json')
    if not os.path.exists(path):
        return None
    from name_binding import binding_checks

    from omg_llava.models.llm import InternLM2ForCausalLM, InternLM2Tokenizer
    recorded = _read_json(path)
    folder = os.path.join(work_dir, 'llm')
    llm = InternLM2ForCausalLM.from_pretrained(folder)
    return dict(chosen_seeds=recorded['chosen_seeds'], passed=recorded['passed'],
                tries=[{k: v for k, v in t.items() if k not in ('losses_every_50', 'llm')}
                       for t in recorded['tries']],
                language_stage=binding_checks(llm, InternLM2Tokenizer.from_pretrained(folder)))


def report(work_dir: str) -> dict:
    """Print the figures of ``work_dir``, write ``curves.png`` and ``figures.json``; return the
    figures."""
    # a --committed-stages run trained the pretrain and the finetune only
    curves = {stage: read_scalars(os.path.join(work_dir, stage)) for stage in STAGES
              if os.path.isdir(os.path.join(work_dir, stage))}
    timings = _read_json(os.path.join(work_dir, 'timings.json'))
    refseg = _read_json(os.path.join(work_dir, 'test', 'refseg', 'metrics.json'))
    region_qa = _read_json(os.path.join(work_dir, 'test', 'region_qa', 'metrics.json'))
    prompt_qa_path = os.path.join(work_dir, 'test', 'prompt_qa', 'metrics.json')
    prompt_qa = _read_json(prompt_qa_path) if os.path.exists(prompt_qa_path) else None
    plan_path = os.path.join(work_dir, 'plan.json')
    plan = _read_json(plan_path) if os.path.exists(plan_path) else {}
    if plan:
        print(f'training processes per stage: {plan["processes"]} x {plan["threads_per_process"]} '
              'thread(s) (peak RSS is that of the largest single process)')
    print('\nstep                    wall s   peak RSS so far (MiB)')
    for name, t in timings.items():
        print(f'{name:<22} {t["seconds"]:>7.0f}   {t["peak_rss_mib_so_far"]:>8}')
    steps = ('name_binding', 'language_stage', 'omg_seg_pre_stage', 'pretrain', 'finetune')
    training = sum(timings[k]['seconds'] for k in steps if k in timings)
    print(f'training total          {training:>6.0f} s ({training / 60:.1f} min)')
    binding = name_binding_figures(work_dir)
    if binding:
        print(f'\nbinding part ({len(binding["tries"])} tries; held-out accuracy: region colours, '
              'the same scaled, every form in the first wording, every wording, three names):')
        for t in binding['tries']:
            kept = t['seed'] == binding['chosen_seeds'][t['part'] - 1]
            print(f'  part {t["part"]} seed {t["seed"]}: '
                  + ' / '.join(f'{t[k]:.3f}' for k in CHECK_NAMES) + ('  (kept)' if kept else ''))
        checks = binding['language_stage']
        print('  language-stage LLM: ' + ' / '.join(f'{checks[k]:.3f}' for k in CHECK_NAMES))
    print('\nlosses (first logged → last logged)')
    for stage, series in curves.items():
        for name, points in sorted(series.items()):
            print(f'  {STAGES[stage]:<20} {name:<10} {points[0][1]:8.3f} → {points[-1][1]:8.3f}  '
                  f'(iterations {points[0][0]}–{points[-1][0]})')
    print(f'\nreferring segmentation, held-out val ({refseg["num_expressions"]} expressions): '
          f'cIoU {refseg["cIoU"]:.3f}, gIoU {refseg["gIoU"]:.3f}, answers without [SEG] '
          f'{refseg["num_without_seg"]}')
    referring = referring_breakdown(work_dir)
    print(f'  answers repeating the asked-for expression: {referring["repeated_expression"]:.1%}\n'
          f'{format_kind_figures(referring["by_kind"])}')
    if referring['pre_stage']:
        print('  the OMG-Seg pre-stage\'s own referring '
              f'lookups:\n{format_kind_figures(referring["pre_stage"])}')
    print('region questions, held-out val:')
    for kind in ('what', 'colour', 'shape'):
        if f'accuracy_{kind}' in region_qa:
            print(f'  {kind:<7} accuracy {region_qa[f"accuracy_{kind}"]:.3f}  '
                  f'(chance {region_qa[f"chance_{kind}"]:.3f}, '
                  f'{region_qa[f"num_{kind}"]} questions)')
    if prompt_qa:
        from prompt_qa import format_table
        print(f'questions about a point / box / mask prompt, held-out val (prompt_qa.py):\n'
              f'{format_table(prompt_qa)}')
        prompt_qa = {k: v for k, v in prompt_qa.items() if k != 'answers'}
    png = os.path.join(work_dir, 'curves.png')
    plot_curves(curves, png)
    print(f'\ntraining curves: {png}')
    figures = dict(plan=plan, timings=timings, training_seconds=training, name_binding=binding,
                   refseg=refseg,
                   referring=referring, region_qa=region_qa, prompt_qa=prompt_qa,
                   losses={stage: {name: dict(first=points[0][1], last=points[-1][1])
                                   for name, points in s.items()}
                           for stage, s in curves.items()})
    with open(os.path.join(work_dir, 'figures.json'), 'w', encoding='utf-8') as f:
        json.dump(figures, f, indent=2)
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/tiny_synthetic',
                        help="train_tiny.py's work dir")
    return report(parser.parse_args(argv).work_dir)


if __name__ == '__main__':
    main()
