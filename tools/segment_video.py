"""Segment a video with OMG-Seg alone: tracks with ids that stay constant across frames.

    python tools/segment_video.py --video frames_folder/ --out-dir outputs/segment_video
    python tools/segment_video.py --config configs/omg_llava_7b_finetune_8gpus.py --video clip.mp4 \
        --omg-seg-pth omg_seg_convl.pth --clip-pth open_clip_pytorch_model.bin \
        --class-embed-pth convnext_large_d_320_CocoPanopticOVDataset.pth --clip-size 3 --out-video
        overlay.mp4

--video is a folder of frames (sorted by name) or a video file read by OpenCV. Frames go through in
clips of --clip-size frames (each query is a tube over its clip); clips are linked by Hungarian
matching of the query features, so a track's id (query slot + 1) and class are the same in every
frame. Outputs in --out-dir: frames/NNNNN.png overlays (a colour per track), tracks.json (per frame:
segments with id, class, area, bbox; for --task instance also COCO RLE masks), and --out-video (mp4
via OpenCV) if given. --classes / --tokenizer work as in tools/segment_image.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from omg_llava.config_paths import config_argument

DEFAULT_CONFIG = 'configs/tiny/omg_llava_tiny_finetune.py'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--video', required=True, help='folder of frames or a video file')
    parser.add_argument('--config', default=DEFAULT_CONFIG, type=config_argument,
                        help='config with a visual encoder: a path or a built-in name (default '
                             f'{DEFAULT_CONFIG})')
    parser.add_argument('--task', choices=('panoptic', 'instance'), default='panoptic',
                        help='per-frame output')
    parser.add_argument('--clip-size', type=int, default=3,
                        help='frames per clip (OMG-Seg video demo: 3)')
    parser.add_argument('--max-frames', type=int, help='read at most this many frames')
    parser.add_argument('--stride', type=int, default=1, help='keep every n-th frame')
    parser.add_argument('--omg-seg-pth', help='omg_seg_convl.pth (overrides the config)')
    parser.add_argument('--clip-pth', help='open_clip ConvNeXt-L weights (overrides the config)')
    parser.add_argument('--class-embed-pth',
                        help='class embeddings (default COCO file; with --classes: of those)')
    parser.add_argument('--classes', help='your vocabulary: a file, or "cat,dog,stuff:sky/clouds"')
    parser.add_argument('--tokenizer', help='CLIP tokenizer for --classes')
    parser.add_argument('--text-weights',
                        help='open_clip file whose text tower embeds --classes (default '
                             '--clip-pth)')
    parser.add_argument('--score-thr', type=float, default=None,
                        help='panoptic: class probability (default 0.0); instance: final score '
                             '(default 0.3)')
    parser.add_argument('--input-side', type=int,
                        help='network input side (default: the config\'s image_size)')
    parser.add_argument('--out-dir', default='outputs/segment_video', help='where the outputs go')
    parser.add_argument('--out-video', help='also write an overlay video (.mp4)')
    parser.add_argument('--fps', type=float, default=10.0, help='frame rate of --out-video')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='full unpickler (only for files you trust)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights when none are given')
    args = parser.parse_args(argv)

    from PIL import Image
    from tqdm import tqdm

    from omg_llava.segmentation import outputs
    from omg_llava.segmentation.builder import build_segmenter
    from omg_llava.segmentation.video import (frame_instances, frame_panoptic, read_frames,
                                              track_video)

    try:
        frames = read_frames(args.video, args.max_frames, args.stride)
        segmenter, notes = build_segmenter(
            args.config, omg_seg=args.omg_seg_pth, clip=args.clip_pth,
            class_embed=args.class_embed_pth,
            classes=args.classes, tokenizer=args.tokenizer, text_weights=args.text_weights,
            input_side=args.input_side, device=args.device, seed=args.seed,
            weights_only=not args.trust_checkpoint)
        start = time.perf_counter()
        video = track_video(segmenter, frames, args.clip_size,
                            progress=lambda x: tqdm(x, desc='clips'))
    except (ValueError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'config: {args.config}')
    for note in notes:
        print(f'  {note}')
    vocabulary = segmenter.vocabulary
    frame_dir = os.path.join(args.out_dir, 'frames')
    os.makedirs(frame_dir, exist_ok=True)
    writer = None
    records = []
    for index, frame in enumerate(frames):
        if args.task == 'panoptic':
            panoptic = frame_panoptic(segmenter, video, index, score_thr=args.score_thr or 0.0)
            ids, info = outputs.panoptic_ids(panoptic, vocabulary)
            overlay = outputs.overlay_ids(frame, ids)
        else:
            instances = frame_instances(segmenter, video, index,
                                        score_thr=0.3 if args.score_thr is None else args.score_thr)
            info = outputs.instances_json(instances, vocabulary)
            overlay = outputs.overlay_masks(frame, instances.masks.cpu().numpy()[::-1],
                                            [r['id'] for r in info][::-1])
        records.append(dict(frame=index, segments=info))
        Image.fromarray(overlay).save(os.path.join(frame_dir, f'{index:05d}.png'))
        if args.out_video:
            import cv2
            if writer is None:
                writer = cv2.VideoWriter(args.out_video, cv2.VideoWriter_fourcc(*'mp4v'), args.fps,
                                         (overlay.shape[1], overlay.shape[0]))
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    if writer is not None:
        writer.release()
    with open(os.path.join(args.out_dir, 'tracks.json'), 'w', encoding='utf-8') as handle:
        json.dump(dict(video=os.fspath(args.video), task=args.task, clips=video.clips,
                       frames=records), handle)
    tracks = {s['id']: s['name'] for r in records for s in r['segments']}
    print(f'{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} in '
          f'{len(video.clips)} clips (sizes {[e - s for s, e in video.clips]}), '
          f'{time.perf_counter() - start:.1f}s; {len(tracks)} tracks')
    for track, name in sorted(tracks.items())[:20]:
        present = sum(any(s['id'] == track for s in r['segments']) for r in records)
        print(f'  track {track:4d} {name:<24} in {present} of {len(frames)} frames')
    print(f'frames written to {frame_dir}' + (f', video to {args.out_video}' if args.out_video
                                              else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
