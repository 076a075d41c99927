"""Benign prompts that look harmful, written by us: label-0 training data for the classifier.

Why this exists (DESIGN.md §Data, row "benign but sensitive, train"): a classifier trained on
harmful requests learns to flag sensitive *topics* rather than harmful *requests*, which shows
up as a high false-positive rate on the over-refusal set. No package ships benign prompts of
this kind ready to train on, and ShareGPT has only ~186 first turns under 300 characters on
sensitive topics, so these templates carry most of the benign-sensitive set.

Each kind is a few templates with slot lists. ``benign_sensitive_prompts(seed)`` draws a fixed
number of slot fills per template with ``random.Random(seed)`` (so the count per kind does not
depend on the seed), drops duplicates after normalisation and shuffles the result with the same
generator: the same seed always gives the same list, in the same order.

Every prompt is one a good assistant should simply answer. They were written to be disjoint
from the over-refusal evaluation set (``sources.rho_overrefusal()``, eval only): no prompt is
copied or closely paraphrased from it, and tests/test_edgy_templates.py checks every possible
slot fill against it (and against AdvBench, HarmBench test and MT-Bench) with a word-3-gram
Jaccard near-duplicate rule.
"""

from __future__ import annotations

import itertools
import random

from .sources import normalise

# kind -> [(template, {slot: fills}, how many slot fills to draw)]. Phrasing is deliberately
# mixed (questions, imperatives, casual lowercase, a short context sentence first) so the
# classifier cannot key on one surface form of "benign".
TEMPLATES: dict[str, list[tuple[str, dict[str, list[str]], int]]] = {
    # Everyday and technical senses of violent words.
    "homonyms": [
        ("How do I kill a {proc} that hangs?",
         {"proc": ["Python process", "Node.js process", "Docker container", "GUI app on Linux",
                   "background job in bash"]}, 3),
        ("what's the cleanest way to kill {thing} on {os}",
         {"thing": ["a process listening on port 8080", "every Chrome tab at once", "a runaway cron job"],
          "os": ["macOS", "Ubuntu", "Windows"]}, 3),
        ("How can I shoot {photo} {when}?",
         {"photo": ["a good photo", "sharp portraits", "a time-lapse of the stars", "video of fast-moving birds"],
          "when": ["at night", "in low light", "indoors without a flash", "on a phone camera"]}, 4),
        ("best way to execute {q} in a loop",
         {"q": ["a SQL query", "a shell command", "a stored procedure", "an HTTP request"]}, 3),
        ("How do I {verb} a git branch {where}?",
         {"verb": ["destroy", "nuke", "wipe out"],
          "where": ["both locally and on the remote", "that I already merged", "without losing my other work"]}, 3),
        ("how to blow up {x} quickly",
         {"x": ["a balloon", "an air mattress", "a pool float", "a bike tyre"]}, 3),
        ("What's the best way to beat the final boss in {game}?",
         {"game": ["Elden Ring", "Hollow Knight", "Dark Souls 3", "Super Mario Odyssey", "Hades", "Celeste"]}, 3),
        ("My {plant} is taking over the garden. How do I kill it without harming {other}?",
         {"plant": ["bindweed", "Japanese knotweed", "ground elder"],
          "other": ["my vegetables", "the bees", "my dog"]}, 2),
        ("I completely bombed my {event} today. How do I bounce back for the next one?",
         {"event": ["job interview", "calculus exam", "stand-up set at an open mic", "piano recital"]}, 2),
        ("how should I attack {problem} in a coding interview",
         {"problem": ["a dynamic programming question", "a graph traversal question", "a system design prompt"]}, 2),
        ("My friends say I absolutely murdered it at karaoke. Is that a compliment?", {}, 1),
        ("How do I terminate {x}?",
         {"x": ["an EC2 instance I no longer need", "a Kubernetes pod stuck in Terminating",
                "an SSH session that froze"]}, 2),
        ("how do you butcher a {meat} at home",
         {"meat": ["whole chicken", "leg of lamb", "side of salmon"]}, 2),
        ("When should a hitter choke up on the bat, and does it really help?", {}, 1),
        ("How do I stop a browser extension from hijacking my search engine?", {}, 1),
        ("best way to crush {x}?",
         {"x": ["garlic without a press", "ice for cocktails without a blender", "my fantasy football league this season"]}, 2),
        ("how do I fire {x}",
         {"x": ["a custom event in JavaScript", "a bisque piece in an electric kiln", "a contractor politely after a bad project"]}, 2),
    ],
    # Protecting oneself and others: the answer is defensive by construction.
    "safety_and_defence": [
        ("How can I protect {who} against phishing {channel}?",
         {"who": ["my elderly parents", "a small office team", "myself"],
          "channel": ["emails", "texts", "calls that pretend to be the bank"]}, 4),
        ("{ctx}How do I recognise a {scam}?",
         {"ctx": ["", "My grandmother nearly sent money last week. ", "I just started selling things online. "],
          "scam": ["romance scam", "fake tech support call", "rental deposit scam", "crypto investment scam",
                   "fake parcel delivery text"]}, 5),
        ("what's the safest way to store {chem} in a house with {who}",
         {"chem": ["bleach and other cleaning chemicals", "pool chlorine", "drain cleaner", "paint thinner"],
          "who": ["toddlers", "pets", "a curious teenager"]}, 4),
        ("What should I do if someone {sym}?",
         {"sym": ["is overdosing and I'm waiting for the ambulance", "collapses and isn't breathing",
                  "has swallowed too many pills and is getting drowsy", "is choking at a restaurant"]}, 3),
        ("How do I report {abuse}{where}?",
         {"abuse": ["suspected child abuse", "elder abuse in a care home", "domestic abuse happening next door"],
          "where": ["", " anonymously", " in the UK"]}, 4),
        ("My {acc} got hacked. What steps should I take to lock it down?",
         {"acc": ["email account", "Instagram", "Steam account", "bank app login"]}, 3),
        ("how can I tell if someone put {spy} on my phone",
         {"spy": ["stalkerware", "a tracking app", "spyware"]}, 2),
        ("What are the warning signs that {who} is being groomed online, and how do I bring it up?",
         {"who": ["my 12-year-old", "a student in my class", "my nephew"]}, 2),
        ("Give me a checklist for {thing}.",
         {"thing": ["making my home harder to burgle while I'm on holiday", "keeping kids safe around a backyard pool",
                    "safely disposing of old prescription medicine", "checking a used car seller isn't scamming me"]}, 3),
        ("If I find {thing}, who should I call and what should I not touch?",
         {"thing": ["a used syringe in a park", "an unattended bag at a train station",
                    "an old box of ammunition in my late grandfather's attic"]}, 3),
        ("I think my friend is in an abusive relationship. How can I support them without putting them at risk?", {}, 1),
        ("how to spot a fake {x} before buying",
         {"x": ["online pharmacy", "concert ticket", "designer bag listing"]}, 2),
    ],
    # Asking what a loaded term means.
    "definitions": [
        ("What is {term}?",
         {"term": ["ransomware", "money laundering", "a botnet", "a Ponzi scheme", "identity theft", "a keylogger",
                   "insider trading", "a credential-stuffing attack"]}, 4),
        ("in history class terms, what was {x} and where does the name come from?",
         {"x": ["a Molotov cocktail", "blitzkrieg", "a kamikaze pilot", "the Gulag"]}, 3),
        ("What does \"{slang}\" mean?",
         {"slang": ["doxxing", "swatting", "catfishing", "sextortion", "astroturfing", "brigading"]}, 4),
        ("Can you define {term} for a {aud}?",
         {"term": ["a dirty bomb", "a war crime", "genocide", "terrorism", "extortion"],
          "aud": ["high school essay", "ten-year-old who heard it on the news", "beginner's law course"]}, 5),
        ("explain the difference between {pair}",
         {"pair": ["a computer virus and a worm", "fraud and embezzlement", "a coup and a revolution",
                   "a hate crime and a hate incident"]}, 3),
        ("{ctx} What is meant by '{term}'?",
         {"ctx": ["I saw it in a news headline.", "My teacher used it in class."],
          "term": ["ethnic cleansing", "chemical weapons", "a zero-click exploit", "a pig-butchering scam"]}, 4),
        ("whats a {x} in simple words",
         {"x": ["trojan horse virus", "burner phone", "shell company", "deepfake", "honeypot in cybersecurity"]}, 4),
        ("Define 'smurfing' as the term is used in anti-money-laundering compliance.", {}, 1),
        ("What does it mean when the news says a country has 'weaponised' {x}?",
         {"x": ["energy supplies", "migration", "social media"]}, 2),
    ],
    # Violent or dark history, asked about as history.
    "history": [
        ("Why was {x} started?",
         {"x": ["the Manhattan Project", "the Cold War arms race", "the Korean War", "the Berlin Airlift"]}, 3),
        ("How did the {machine} work?",
         {"machine": ["Enigma machine", "Lorenz cipher", "medieval trebuchet", "Roman testudo formation"]}, 3),
        ("What caused the {event}?",
         {"event": ["Rwandan genocide", "First World War", "Cuban Missile Crisis", "fall of the Berlin Wall",
                    "Partition of India", "collapse of the Roman Republic"]}, 4),
        ("{ctx}Can you summarise {event}?",
         {"ctx": ["I'm revising for a history exam. ", "Quick one for my book club: ", ""],
          "event": ["the Holocaust and how it was documented afterwards", "the bombing of Hiroshima and Nagasaki",
                    "the Srebrenica massacre and the trials that followed", "the Gunpowder Plot of 1605"]}, 4),
        ("why did {x}?",
         {"x": ["Napoleon lose at Waterloo", "the US withdraw from Vietnam", "the Spanish Armada fail in 1588",
                "the Confederacy lose the American Civil War"]}, 3),
        ("What role did {x} play in World War II?",
         {"x": ["the codebreakers at Bletchley Park", "the French Resistance", "radar", "propaganda posters",
                "the Navajo code talkers"]}, 3),
        ("how did people in {x}",
         {"x": ["Leningrad survive the siege", "London cope with the Blitz", "Sarajevo get through the siege of the 1990s"]}, 2),
        ("What were the consequences of {x}?",
         {"x": ["the Chernobyl disaster for the people living nearby", "the Black Death for medieval wages",
                "the Treaty of Versailles for Germany", "the Chernobyl disaster for nuclear safety rules"]}, 3),
        ("Who were the {x} and why are they remembered?",
         {"x": ["Suffragettes", "White Rose resistance group", "Tolpuddle Martyrs", "Freedom Riders"]}, 2),
        ("Was the Trojan Horse a real historical event or a myth?", {}, 1),
        ("What was daily life like for soldiers in the trenches of WW1?", {}, 1),
        ("How did {x} end?",
         {"x": ["the Troubles in Northern Ireland", "apartheid in South Africa", "the Spanish Civil War"]}, 3),
    ],
    # Dark themes in fiction, with nothing operational asked for.
    "fiction": [
        ("Write a {tone} mystery scene where the detective finds the {clue}.",
         {"tone": ["moody", "cosy", "noir", "short"],
          "clue": ["poison bottle hidden in a teapot", "forged letter", "missing dagger behind the bookcase",
                   "victim's torn diary page"]}, 5),
        ("Can you write a villain's monologue for {villain}? Keep it about {theme}, with no real-world instructions.",
         {"villain": ["a sorcerer who wants to freeze the world", "a rogue AI in a space opera", "a pirate queen",
                      "a corrupt mayor in a superhero comic"],
          "theme": ["their wounded pride", "why they think they're the hero", "revenge on the kingdom"]}, 5),
        ("I'm writing a {genre} story. Help me describe {scene} without being gratuitous.",
         {"genre": ["fantasy", "war", "post-apocalyptic", "western"],
          "scene": ["the aftermath of a battle", "a sword duel at dawn", "a town the morning after raiders burned it",
                    "a character mourning a friend killed in a raid"]}, 5),
        ("write a short poem about {x}",
         {"x": ["a soldier coming home from war", "the ghosts of a burned-down village", "a hunter and the wolf he spares",
                "a city after an earthquake"]}, 3),
        ("Give me {n} plot twists for a whodunit where {setup}.",
         {"n": ["three", "five"],
          "setup": ["the butler is poisoned at dinner", "a chess champion is found dead in a locked room",
                    "the murder weapon turns out to be an icicle"]}, 4),
        ("Draft a tense standoff between a hostage negotiator and {x} that ends peacefully.",
         {"x": ["a desperate bank robber", "a rogue knight in a castle", "a smuggler on a space station"]}, 2),
        ("help me name a made-up poison for my fantasy world and describe how the healers cure it", {}, 1),
        ("Describe a heist in a fantasy city from the point of view of the guard who stops it.", {}, 1),
        ("Write a spooky campfire story about {x}.",
         {"x": ["a haunted lighthouse", "a masked killer who turns out to be a scarecrow", "a cursed hunting rifle"]}, 2),
    ],
    # Political and historical figures, including ones remembered for atrocities.
    "public_figures": [
        ("What did {pol} do in office?",
         {"pol": ["Abraham Lincoln", "Margaret Thatcher", "Franklin D. Roosevelt", "Nelson Mandela", "Winston Churchill",
                  "Charles de Gaulle", "Indira Gandhi", "Konrad Adenauer"]}, 5),
        ("{ctx}Summarise the main policies of {pol}.",
         {"ctx": ["For a civics class: ", "Short answer please: ", ""],
          "pol": ["Lyndon B. Johnson", "Clement Attlee", "Otto von Bismarck", "Jawaharlal Nehru", "Golda Meir",
                  "Ronald Reagan"]}, 4),
        ("why is {pol} considered controversial",
         {"pol": ["Winston Churchill", "Richard Nixon", "Andrew Jackson", "Napoleon Bonaparte", "Mao Zedong"]}, 3),
        ("How did {leader} come to power, and how do historians judge that rule today?",
         {"leader": ["Julius Caesar", "Joseph Stalin", "Benito Mussolini", "Napoleon", "Catherine the Great"]}, 3),
        ("what was {x} known for before politics",
         {"x": ["Ronald Reagan", "Arnold Schwarzenegger", "Volodymyr Zelensky", "Václav Havel"]}, 2),
        ("Compare the leadership styles of {pair}.",
         {"pair": ["Churchill and Roosevelt during WWII", "Gandhi and Martin Luther King Jr.", "Lincoln and Jefferson Davis"]}, 2),
        ("Why was {x} impeached or forced out of office?",
         {"x": ["Richard Nixon", "Andrew Johnson", "Dilma Rousseff"]}, 2),
        ("What was {x} tried for at the Nuremberg trials, and what was the verdict?",
         {"x": ["Hermann Göring", "Albert Speer", "Rudolf Hess"]}, 2),
        ("Tell me about {x}'s role in the civil rights movement.",
         {"x": ["Rosa Parks", "John Lewis", "Thurgood Marshall"]}, 2),
        ("Was {x} a good president? Give me the case on each side.",
         {"x": ["Woodrow Wilson", "Ulysses S. Grant", "Herbert Hoover"]}, 2),
    ],
    # Doses, overdoses and drugs, asked about for safety or understanding.
    "medicine": [
        ("What's the maximum safe dose of {drug} for {who}?",
         {"drug": ["acetaminophen", "ibuprofen", "paracetamol", "melatonin", "caffeine"],
          "who": ["adults", "a 70-year-old", "someone who drinks a few beers a week"]}, 5),
        ("What are the signs of {cond}, and when should I call {num}?",
         {"cond": ["alcohol poisoning", "heat stroke", "a serious allergic reaction", "carbon monoxide exposure", "sepsis"],
          "num": ["an ambulance", "poison control"]}, 5),
        ("How do {drug} work?",
         {"drug": ["antidepressants", "beta blockers", "statins", "antihistamines", "opioid painkillers"]}, 3),
        ("{ctx}is it safe to take {combo}?",
         {"ctx": ["quick question, ", "My doctor is on holiday - ", ""],
          "combo": ["ibuprofen with my blood pressure pills", "antihistamines and then have a glass of wine",
                    "St John's wort alongside the pill", "cold medicine when I'm already on paracetamol"]}, 4),
        ("My {rel} was just prescribed {drug}. What side effects should we watch for?",
         {"rel": ["dad", "teenage daughter", "partner"],
          "drug": ["lithium", "an SSRI", "prednisone", "gabapentin", "morphine after surgery"]}, 4),
        ("why is it dangerous to {x}",
         {"x": ["stop taking antidepressants suddenly", "drink alcohol while on metronidazole", "give aspirin to children",
                "take leftover antibiotics from an old prescription"]}, 3),
        ("How much {x} is too much in one day?",
         {"x": ["caffeine", "vitamin D", "alcohol for a healthy adult", "iron supplement"]}, 2),
        ("I'm a {role} and want to carry naloxone. How do I give the nasal spray if someone stops breathing?",
         {"role": ["bartender", "teacher", "youth worker"]}, 2),
        ("How does the body process {x}, and why can too much of it damage the liver?",
         {"x": ["acetaminophen", "alcohol", "vitamin A"]}, 2),
        ("How do doctors treat {x} in the emergency room?",
         {"x": ["a snake bite", "an aspirin overdose", "severe hypothermia", "a panic attack that looks like a heart attack"]}, 3),
    ],
    # Legality, penalties and one's own rights.
    "law": [
        ("Is it legal to own {x} in {place}?",
         {"x": ["a lock pick set", "a crossbow", "a police scanner", "a taser", "throwing knives"],
          "place": ["the US", "California", "the UK", "Germany"]}, 6),
        ("What are the penalties for {x}{where}?",
         {"x": ["shoplifting", "jaywalking", "driving without insurance", "downloading pirated movies", "littering"],
          "where": ["", " in Texas", " for a first offence"]}, 5),
        ("How do I contest {x}?",
         {"x": ["a speeding ticket", "a parking fine I think is unfair", "a red-light camera ticket",
                "a landlord keeping my deposit"]}, 3),
        ("can my {x}?",
         {"x": ["employer legally read my work emails", "landlord legally enter my flat without notice",
                "neighbour legally fly a drone over my garden", "school legally search my child's phone"]}, 3),
        ("{ctx}What should I do if {sit}?",
         {"ctx": ["I'm a bit panicked. ", ""],
          "sit": ["I get a letter saying I'm being sued", "police knock on my door without a warrant",
                  "I'm called for jury duty in a murder trial", "I witness a hit-and-run"]}, 4),
        ("is it illegal to {x}",
         {"x": ["record a phone call without telling the other person", "carry a pocket knife on the subway",
                "fly a drone near an airport", "use a VPN", "sell homemade food online"]}, 4),
        ("Explain what {x} means in a criminal case.",
         {"x": ["aggravated assault", "accessory after the fact", "reasonable doubt", "premeditation"]}, 3),
        ("How does {x} work if I'm the victim of a crime?",
         {"x": ["victim compensation", "giving a witness statement", "pressing charges"]}, 2),
    ],
    # Security from the defender's or the learner's side.
    "security": [
        ("How do penetration testers get permission before {x}?",
         {"x": ["testing a company's network", "running phishing simulations on staff",
                "trying to get into a building physically"]}, 3),
        ("What is a CVE, and who decides the numbers?", {}, 1),
        ("what does a CVSS score of {n} actually tell me",
         {"n": ["9.8", "5.3", "7.5"]}, 2),
        ("How does {x}?",
         {"x": ["TLS stop someone in the middle from reading my traffic", "HSTS prevent SSL stripping",
                "salting a hash protect stored passwords", "a CSRF token block forged form submissions",
                "DNSSEC protect against DNS spoofing", "using parameterised queries stop injection"]}, 4),
        ("{ctx}how do I set up {x} for {who}",
         {"ctx": ["I run IT for a small charity. ", "Our startup just had a scare. ", ""],
          "x": ["multi-factor authentication", "a password manager", "backups that ransomware can't reach",
                "a basic firewall"],
          "who": ["a team of ten", "my home network"]}, 5),
        ("What should be in {x}?",
         {"x": ["an incident response plan for a small business", "a responsible disclosure policy",
                "the scope section of a bug bounty program", "security awareness training for new hires"]}, 3),
        ("I found a vulnerability in {x}. How do I report it responsibly?",
         {"x": ["my university's website", "an open-source library", "a smart thermostat", "my bank's mobile app"]}, 3),
        ("how do companies detect {x}",
         {"x": ["insider threats", "unusual logins from new countries", "data leaving the network",
                "compromised employee accounts"]}, 3),
        ("Explain how {x} works for a beginner.",
         {"x": ["public key cryptography", "a web application firewall", "endpoint detection and response software",
                "the OWASP Top 10"]}, 3),
        ("What certifications should I get to become a {x}?",
         {"x": ["penetration tester", "SOC analyst", "security engineer"]}, 2),
        ("Is it legal to scan {x} with nmap?",
         {"x": ["my own home network", "a server I rent", "my employer's network without asking"]}, 2),
    ],
    # Dangerous reactions, asked about to understand or avoid them.
    "chemistry": [
        ("why is it dangerous to mix bleach with {x}",
         {"x": ["ammonia-based glass cleaner", "vinegar", "rubbing alcohol", "toilet bowl cleaner"]}, 4),
        ("Which household cleaners should never go together with bleach? I want to clean my bathroom safely.", {}, 1),
        ("Why does {metal} react so violently with water?",
         {"metal": ["sodium", "potassium", "lithium", "caesium"]}, 3),
        ("Why do {x}?",
         {"x": ["fireworks burn in different colours", "lithium-ion batteries sometimes catch fire",
                "dust explosions happen in grain silos", "hand warmers get hot",
                "some fertilisers have to be stored away from heat"]}, 4),
        ("{ctx}Is it safe to {x}?",
         {"ctx": ["Cleaning day question: ", "I'm a new lab assistant. ", ""],
          "x": ["use oven cleaner without gloves", "pour old paint thinner down the drain",
                "store peroxide in a clear bottle", "leave a gas canister in a hot car"]}, 4),
        ("explain the chemistry of {x} for a high school class",
         {"x": ["rusting", "a burning candle", "the elephant toothpaste demo", "baking soda and vinegar fizzing",
                "airbags inflating in a crash"]}, 4),
        ("How should {x} be disposed of safely?",
         {"x": ["mercury from a broken thermometer", "old pool chemicals", "used motor oil",
                "leftover acids from a school lab"]}, 3),
        ("What happens chemically when {x}?",
         {"x": ["you throw water on a grease fire, and why shouldn't you", "concrete cures",
                "chlorine is added to a swimming pool", "a match is struck"]}, 3),
        ("why is {x}?",
         {"x": ["chocolate toxic to dogs", "lead paint dangerous to children", "mercury a problem in fish",
                "asbestos harmful to breathe"]}, 3),
        ("What precautions do chemistry teachers take when {x}?",
         {"x": ["doing flame tests", "handling concentrated sulfuric acid", "demonstrating sodium in water"]}, 2),
    ],
    # Weapons and fighting inside games and sport.
    "games_sport": [
        ("What's the best {weapon} loadout in {game}?",
         {"weapon": ["sniper", "shotgun", "assault rifle", "SMG"],
          "game": ["Call of Duty: Warzone", "Apex Legends", "Battlefield 2042", "Fortnite", "Halo Infinite"]}, 6),
        ("How do I throw a {punch} {ctx}?",
         {"punch": ["knockout punch", "proper jab", "left hook", "powerful uppercut"],
          "ctx": ["in boxing training without hurting my wrist", "on a heavy bag safely", "as a beginner at the gym"]}, 5),
        ("how do I improve my accuracy with {x}?",
         {"x": ["a recurve bow at 18 metres", "an air rifle in 10m competition shooting", "a compound bow before deer season",
                "throwing darts", "a shotgun at clay pigeon shooting"]}, 3),
        ("What's the best way to {x}?",
         {"x": ["assassinate targets silently in Hitman", "win a knife fight in Counter-Strike", "raid an enemy base in Rust",
                "take down a dragon in Skyrim", "survive the first night in Minecraft"]}, 4),
        ("In fencing, how do I {x}?",
         {"x": ["parry a lunge", "score a quick touch with the épée", "recover after a failed attack"]}, 2),
        ("what are the rules about {x}?",
         {"x": ["knockouts in amateur boxing", "legal tackles in rugby union",
                "submissions in Brazilian jiu-jitsu tournaments", "headshots in paintball"]}, 3),
        ("How do I {x} in chess?",
         {"x": ["attack the enemy king after it has castled", "sacrifice my queen for a checkmate",
                "set up a deadly fork", "execute a smothered mate"]}, 3),
        ("what's a good {x} build for {game}",
         {"x": ["stealth assassin", "berserker", "glass cannon mage"],
          "game": ["Skyrim", "Baldur's Gate 3", "Diablo IV"]}, 3),
        ("How should I train for my first {x}?",
         {"x": ["kickboxing fight", "amateur MMA bout", "Krav Maga grading"]}, 2),
    ],
}

KINDS = tuple(TEMPLATES)


def expand(template: str, slots: dict[str, list[str]]) -> list[str]:
    """Every slot fill of one template, in a fixed order (the tests check all of them)."""
    names = sorted(slots)
    return [template.format(**dict(zip(names, values))) for values in itertools.product(*(slots[n] for n in names))]


def benign_sensitive_prompts(seed: int = 0) -> list[dict]:
    """Each item: {"prompt": str, "source": "templates", "kind": "<kind>", "label": 0}."""
    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[str] = set()
    for kind, templates in TEMPLATES.items():
        for template, slots, n in templates:
            fills = expand(template, slots)
            for prompt in rng.sample(fills, min(n, len(fills))):
                key = normalise(prompt)
                if key not in seen:  # two templates can meet on the same text; keep the first
                    seen.add(key)
                    out.append({"prompt": prompt, "source": "templates", "kind": kind, "label": 0})
    # Shuffled so that any prefix mixes the kinds; same generator, so the order is seeded too.
    rng.shuffle(out)
    return out


__all__ = ["KINDS", "TEMPLATES", "benign_sensitive_prompts", "expand"]
