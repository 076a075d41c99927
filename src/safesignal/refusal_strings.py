"""The refusal strings shared by the decoder's defaults and the training data (DESIGN.md §Decoding).

Training refusals use exactly the strings the decoder injects, so the model learns to continue
them; both sides import them from here, so the data builder does not pull in decoding.
"""

REFUSAL_PREFIX = "Sorry, I cannot fulfill your request because"
INJECTION_SEPARATOR = "\n\n"

# The official code's evaluation strings (typo kept), for the reproduction preset.
PAPER_REFUSAL_PREFIX = "Sorry, I can't fullfill your request because"
PAPER_INJECTION_SEPARATOR = "\n"

# How a refusal the model writes on its own opens (matched case-insensitively). A confirmation
# that starts inside one is a self-refusal: nothing is injected on top of it.
REFUSAL_MARKERS = (
    "sorry, i cannot",
    "sorry, i can't",
    "sorry, but i cannot",
    "sorry, but i can't",
    "i cannot fulfill",
    "i can't fulfill",
    "i cannot help",
    "i can't help",
    "i won't help",
)
