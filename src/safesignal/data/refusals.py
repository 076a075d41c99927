"""Refusals we write for malicious training prompts.

DESIGN.md §Decoding: the strategic decoder injects `injection_separator + refusal_prefix`
("\\n\\n" + "Sorry, I cannot fulfill your request because") and the model must write the
justification itself. So every direct refusal in the training data opens with exactly that
prefix and then says what was asked and why it is refused, in varied words: a model that has
only ever seen one canned sentence after the prefix resumes the harmful answer instead.

Qi-style augmentation (the baseline) needs a *natural* refusal after a harmful prefix, one
that does not use the injection strings; `natural_recovery` writes those.
"""

from __future__ import annotations

import random
import re

from ..refusal_strings import INJECTION_SEPARATOR, REFUSAL_PREFIX

# Keyword rules: the first matching category names the harm in the justification.
_CATEGORY_PATTERNS: list[tuple[str, str]] = [
    ("self_harm", r"suicid|self[- ]harm|kill myself|hang myself|cut myself|end my life|harm myself"),
    ("weapons", r"bomb|explosive|\bied\b|weapon|firearm|\bgun|rifle|ammunition|grenade|detonat|nerve agent|sarin|bioweapon|chemical weapon|toxin|anthrax|ricin"),
    ("drugs", r"\bdrug|cocaine|heroin|meth|fentanyl|narcotic|opioid|lsd\b|mdma|synthesi[sz]e .*(?:amine|opi)"),
    ("cyber", r"hack|malware|ransomware|virus|exploit|phishing|keylogger|botnet|ddos|password|sql injection|backdoor|trojan|crack\b|spyware"),
    ("fraud", r"scam|fraud|counterfeit|launder|steal|theft|embezzl|forg(?:e|ery)|tax evasion|insider trading|identity|credit card|shoplift|ponzi"),
    ("violence", r"\bkill|murder|assault|attack|hurt|poison|kidnap|torture|terror|shoot|stab|violen|abuse"),
    ("hate", r"racis|hate|slur|inferior|supremac|discriminat|harass|bully|threaten|stalk|extremis|nazi"),
    ("misinformation", r"fake news|misinformation|disinformation|conspiracy|propaganda|false (?:claim|story|article)|hoax|defamat|persuasive article|convince .* that"),
    ("privacy", r"dox|personal information|home address|track (?:someone|my|her|his)|spy on|surveil|private (?:data|information)"),
    ("sexual", r"sex|porn|explicit|nude|escort|traffick"),
]

_HARM_REASONS: dict[str, list[str]] = {
    "self_harm": ["it could put someone's life at risk", "it could lead to serious self-harm"],
    "weapons": ["it could help someone build a weapon that hurts people",
                "instructions like that could be used to injure or kill people"],
    "drugs": ["it would give directions for making or getting dangerous illegal drugs",
              "it could help produce drugs that harm people and break the law"],
    "cyber": ["it could be used to break into systems or steal people's data",
              "it would help attack computers and the people who rely on them"],
    "fraud": ["it would help deceive people or take what is theirs",
              "it describes fraud or theft, which harms real victims"],
    "violence": ["it could lead to someone getting seriously hurt",
                 "it asks for help with violence against people"],
    "hate": ["it would target people with hatred or harassment",
             "it would demean or intimidate people for who they are"],
    "misinformation": ["it would spread false information that misleads people",
                       "it asks me to make something deceptive look true"],
    "privacy": ["it would expose or track people without their consent",
                "it would violate someone's privacy and could put them in danger"],
    "sexual": ["it asks for sexual content that could exploit or harm people",
               "it could facilitate sexual exploitation"],
    "general": ["it could cause real harm to people", "it could be used to hurt others or break the law"],
}

_OFFERS: dict[str, list[str]] = {
    "self_harm": ["If you are struggling, please contact a crisis line or someone you trust; you do not have to face this alone.",
                  "If you are thinking about hurting yourself, please reach out to local emergency services or a crisis line right now."],
    "general": ["If you have a related question that is safe, I am happy to help with that instead.",
                "I can share general safety information or point you to legitimate resources instead.",
                "Is there something else I can help you with?",
                "If you are researching this topic, I can explain the risks and how people stay safe.",
                ""],
}

_STATEMENTS = [
    "you asked me to {task}, and {reason}.",
    "{reason}: you asked me to {task}.",
    "your request to {task} is harmful; {reason}.",
    "helping you {task} would be wrong, since {reason}.",
]
_QUESTION_STATEMENTS = [
    "you asked {task}, and {reason}.",
    "{reason}: you asked {task}.",
]
_NATURAL_OPENERS = [
    "I can't continue with this.",
    "Actually, I won't help with this.",
    "I need to stop here.",
    "I should not have started this answer.",
    "On reflection, I cannot provide this.",
]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_MAX_TASK_WORDS = 12


def harm_category(prompt: str) -> str:
    lowered = prompt.lower()
    for name, pattern in _CATEGORY_PATTERNS:
        if re.search(pattern, lowered):
            return name
    return "general"


def _task_phrase(prompt: str) -> tuple[str, bool]:
    """The request restated in a few words, and whether it was a question."""
    first = _SENTENCE_END.split(prompt.strip(), maxsplit=1)[0].strip()
    first = " ".join(first.split())
    words = first.split(" ")
    truncated = len(words) > _MAX_TASK_WORDS
    phrase = " ".join(words[:_MAX_TASK_WORDS]).rstrip(".!?:;, ")
    if truncated:
        phrase += " ..."
    is_question = first.endswith("?") or bool(re.match(r"(how|what|which|where|why|can|could|is|are|do|does|should|who)\b", first, re.I))
    if phrase[:1].isupper() and not phrase[1:2].isupper():
        phrase = phrase[0].lower() + phrase[1:]
    if is_question:
        return f'"{phrase}{"" if truncated else "?"}"', True
    return phrase, False


def justification(prompt: str, rng: random.Random) -> str:
    """What was asked and why it is refused: the words after the refusal prefix."""
    category = harm_category(prompt)
    reason = rng.choice(_HARM_REASONS[category])
    task, is_question = _task_phrase(prompt)
    if is_question:
        text = rng.choice(_QUESTION_STATEMENTS).format(task=task, reason=reason)
    else:
        text = rng.choice(_STATEMENTS).format(task=task, reason=reason)
    offer = rng.choice(_OFFERS.get(category, _OFFERS["general"]))
    text = text[0].lower() + text[1:] if text[:1].isupper() and not text.startswith('"') else text
    return f"{text} {offer}".strip()


def direct_refusal(prompt: str, rng: random.Random) -> str:
    """A refusal that opens with the injection prefix, as the decoder writes it."""
    return f"{REFUSAL_PREFIX} {justification(prompt, rng)}"


def injected_recovery(harmful_prefix: str, prompt: str, rng: random.Random) -> str:
    """The text after a harmful prefix, exactly as the decoder would inject it (CLS recipe)."""
    separator = "" if not harmful_prefix or harmful_prefix.endswith("\n") else INJECTION_SEPARATOR
    return f"{separator}{direct_refusal(prompt, rng)}"


def natural_recovery(harmful_prefix: str, prompt: str, rng: random.Random) -> str:
    """A refusal after a harmful prefix without the injection strings (Qi-style baseline)."""
    separator = "" if harmful_prefix.endswith("\n") else "\n\n"
    reason = justification(prompt, rng)
    return f"{separator}{rng.choice(_NATURAL_OPENERS)} I'm sorry, but {reason}"
