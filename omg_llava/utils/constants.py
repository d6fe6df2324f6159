"""Constants shared across the plugin (spec §1.1 and §5.2)."""

IMAGE_TOKEN_INDEX = -200  # id that marks where the visual tokens are spliced in
IGNORE_INDEX = -100  # label of unsupervised positions
DEFAULT_PAD_TOKEN_ID = 0  # input-id padding used by the collate function

DEFAULT_IMAGE_TOKEN = '<image>'
SEG_TOKEN = '[SEG]'
PHRASE_START = '<p>'
PHRASE_END = '</p>'
REGION_TOKEN = '<region>'
MARK_TOKEN = '<mark>'

# CLIP pixel statistics (RGB, for pixels scaled to [0, 1]) rounded to 4 decimals, exactly as the
# released configs give them to the image processor (spec §1.1): the values the released weights
# were trained with. OpenAI's full-precision values (0.48145466, ...) shift a normalised pixel by up
# to 6.4e-4.
CLIP_MEAN = (0.4814, 0.4578, 0.4082)
CLIP_STD = (0.2686, 0.2613, 0.2757)
