"""Video with OMG-Seg alone on the tiny random encoder: clip split, 3-D clip decoding, Hungarian
linking of clips, constant track ids and classes across frames, and tools/segment_video.py on
synthetic and skimage frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omg_llava.segmentation.builder import build_segmenter
from omg_llava.segmentation.video import (frame_instances, frame_panoptic, match_queries,
                                          read_frames, segment_clip, split_clips, track_video)

from conftest import TINY_CONFIG, load_tool


def moving_shapes(num_frames: int = 7, size: int = 96) -> list[np.ndarray]:
    """A red square moving right and a blue disc moving down over a grey background."""
    frames = []
    yy, xx = np.mgrid[:size, :size]
    for t in range(num_frames):
        frame = np.full((size, size, 3), 120, dtype=np.uint8)
        x0 = 8 + 6 * t
        frame[20:44, x0:x0 + 24] = (220, 30, 30)
        frame[(yy - (30 + 5 * t)) ** 2 + (xx - 66) ** 2 < 12 ** 2] = (30, 40, 220)
        frames.append(frame)
    return frames


def test_split_clips_as_minvis():
    assert split_clips(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_clips(6, 3) == [(0, 3), (3, 6)]
    assert split_clips(2, 5) == [(0, 2)]
    assert split_clips(5, 1) == [(i, i + 1) for i in range(5)]
    with pytest.raises(ValueError):
        split_clips(0, 3)


def test_match_queries_undoes_a_permutation():
    g = torch.Generator().manual_seed(0)
    previous = torch.randn(20, 16, generator=g)
    perm = torch.randperm(20, generator=g)
    current = previous[perm] * 2 + 0.05 * torch.randn(20, 16, generator=g)  # scale-free (cosine)
    order = match_queries(previous, current)
    assert torch.equal(perm[order], torch.arange(20))  # current[order[j]] is previous[j] again


@pytest.fixture(scope='module')
def segmenter():
    return build_segmenter(str(TINY_CONFIG), seed=0)[0]


def test_one_frame_clip_equals_the_image_path(segmenter):
    frame = moving_shapes(1)[0]
    cls, masks, queries, _ = segment_clip(segmenter, [frame])
    image = segmenter.encode(frame)
    torch.testing.assert_close(cls, image.class_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masks[:, 0], image.mask_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(queries, image.query_features, rtol=1e-4, atol=1e-4)


def test_clip_is_decoded_jointly(segmenter):
    frames = moving_shapes(3)
    cls, masks, queries, _ = segment_clip(segmenter, frames)
    assert cls.shape == (20, 134) and masks.shape == (20, 3, 64, 64) and queries.shape == (20, 64)
    alone = segment_clip(segmenter, frames[:1])[1][:, 0]
    # other frames (and the 3-D positions) take part
    assert not torch.allclose(masks[:, 0], alone, atol=1e-3)


def test_track_ids_and_classes_constant_over_moving_shapes(segmenter):
    frames = moving_shapes(7)
    video = track_video(segmenter, frames, clip_size=3)
    assert video.clips == [(0, 3), (3, 5), (5, 7)] and len(video.mask_logits) == 7
    assert video.class_logits.shape == (20, 134)
    classes_of_track = {}
    instance_sets = []
    for index in range(7):
        pan = frame_panoptic(segmenter, video, index)
        assert pan.labels.shape == (96, 96)
        for query, label, _ in pan.segments:
            assert classes_of_track.setdefault(query, label) == label  # a track never changes class
        inst = frame_instances(segmenter, video, index, max_per_image=10)
        instance_sets.append(sorted(zip(inst.queries.tolist(), inst.labels.tolist())))
    # same (track, class) pairs in every frame
    assert all(s == instance_sets[0] for s in instance_sets)
    # a static video keeps each query in its slot: linking is the identity permutation
    still = track_video(segmenter, [frames[0]] * 6, clip_size=3)
    torch.testing.assert_close(still.mask_logits[0], still.mask_logits[3], rtol=1e-4, atol=1e-4)


def test_segment_video_tool_on_frames_folder_and_video_file(tmp_path, capsys):
    from skimage import data
    photo = data.astronaut()
    folder = tmp_path / 'pan'
    folder.mkdir()
    for t in range(5):  # a camera pan over skimage's astronaut
        Image.fromarray(photo[100:228, 40 + 12 * t:200 + 12 * t]).save(folder / f'{t:03d}.png')
    out = tmp_path / 'out'
    tool = load_tool('segment_video')
    assert tool.main(['--video', str(folder), '--config', str(TINY_CONFIG), '--out-dir', str(out),
                      '--clip-size', '2', '--out-video', str(tmp_path / 'overlay.mp4')]) == 0
    tracks = json.loads((out / 'tracks.json').read_text())
    assert tracks['clips'] == [[0, 2], [2, 4], [4, 5]] and len(tracks['frames']) == 5
    names = {}
    for record in tracks['frames']:
        for seg in record['segments']:
            assert names.setdefault(seg['id'], seg['name']) == seg['name']
    assert np.asarray(Image.open(out / 'frames' / '00004.png')).shape == (128, 160, 3)
    assert len(read_frames(tmp_path / 'overlay.mp4')) == 5  # the overlay video reads back
    assert tool.main(['--video', str(tmp_path / 'overlay.mp4'), '--config', str(TINY_CONFIG),
                      '--task', 'instance',
                      '--out-dir', str(tmp_path / 'out2'), '--score-thr', '0', '--max-frames',
                      '3']) == 0
    frames = json.loads((tmp_path / 'out2' / 'tracks.json').read_text())['frames']
    pairs = [sorted((s['id'], s['category_id']) for s in f['segments']) for f in frames]
    # order follows each frame's mask scores
    assert len(frames) == 3 and pairs[0] == pairs[1] == pairs[2]
    assert tool.main(['--video', str(tmp_path / 'missing'), '--config', str(TINY_CONFIG)]) == 2
    assert 'not found' in capsys.readouterr().err
