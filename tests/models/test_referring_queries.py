"""BagOfWordsQueryEncoder: hashed words and word pairs → decoder queries."""
import pytest
import torch

from omg_llava.models.referring_queries import BagOfWordsQueryEncoder, hashed_word_features


def test_word_features_are_stable_case_blind_and_see_word_order():
    a = hashed_word_features('The circle left of the square', 4096)
    assert a == hashed_word_features('the circle  left of the SQUARE', 4096)  # case and spacing
    assert len(a) == 6 + 5  # words and adjacent pairs
    swapped = hashed_word_features('the square left of the circle', 4096)
    # the pairs differ
    assert sorted(a[:6]) == sorted(swapped[:6]) and sorted(a[6:]) != sorted(swapped[6:])
    assert all(0 <= i < 4096 for i in a)
    assert hashed_word_features('star', 4096) == hashed_word_features('star', 4096)


def test_encoder_gives_one_query_per_sentence_and_learns():
    torch.manual_seed(0)
    encoder = BagOfWordsQueryEncoder(query_channels=8, buckets=64, hidden=16)
    sentences = ['the red circle', 'the star', 'the square left of the red circle']
    queries = encoder(sentences)
    assert queries.shape == (3, 16)
    # each row depends on its sentence only
    torch.testing.assert_close(encoder(sentences[1:2])[0], queries[1])
    targets = torch.randn(3, 16)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = (encoder(sentences) - targets).pow(2).mean()
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    with pytest.raises(ValueError, match=r'expressions \[1\] have no words'):
        encoder(['the star', '  '])
