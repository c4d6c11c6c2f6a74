#!/usr/bin/env python3
"""Generates the planted-fact conversation set (conversations.json) for the memory benchmark
(`./bot.sh bench memory`) and its slice test.

Each user talks for about 200 messages over six months: natural filler, planted facts stated
in varied words, near-distractors (the same kind of fact about someone else, or a listing, a
wish, a hypothetical), late corrections of some facts, and at the end paraphrased questions
that rarely share words with the statement. Users share the kinds of facts with different
values, so a value from another user's conversation in a prompt is a leak.

Deterministic: `python3 tests/data/recall/generate.py` rewrites the same file for the same seed.
"""

import json
import os
import random

SEED = 20261204
USERS = 6
MESSAGES_PER_USER = 200
DAYS = 180

# Values are split between users (disjoint per slot) and distractors (never any user's value).
SLOTS = {
    "birthday": {
        "values": ["14 March", "2 July", "9 November", "23 January", "30 May", "17 October",
                   "5 December", "11 April", "26 June", "8 September"],
        "facts": lambda v: [("user", "birthday", v)],
        "say": [
            "my birthday is on {v}, in case you ever want to send cake",
            "I was born on {v}, a long time ago now",
            "every year on {v} I take the day off, it's my birthday",
            "fun fact: {v} is my birthday",
        ],
        "near": [
            "my dad's birthday is on {d}, I still need a present",
            "my colleague's birthday party is on {d}, should be fun",
            "my best friend turns forty on {d}",
            "the office celebrates everyone's birthdays together on {d}",
        ],
        "ask": [
            "When do I get a year older?",
            "what's the date of my birthday again?",
            "on which day was I born?",
        ],
    },
    "lives_in": {
        "values": ["Porto", "Ghent", "Tampere", "Bologna", "Leipzig", "Cork", "Brno", "Lyon",
                   "Utrecht", "Aarhus"],
        "facts": lambda v: [("user", "lives_in", v)],
        "say": [
            "I live in {v}, right by the river",
            "my flat is in {v}, third floor, no lift",
            "home for me is {v} these days",
            "I've been living in {v} for a few years now",
        ],
        "near": [
            "saw a flat listing in {d} today, way too expensive",
            "my friend just moved to {d} for a new job",
            "there's a nice apartment for rent in {d}, not for me though",
            "we might spend a weekend in {d} next month",
        ],
        "ask": [
            "what town is my flat in?",
            "where do I live again?",
            "which city is home for me?",
        ],
        "correct": [
            "big news, I moved! I live in {v} now, not {old} any more",
            "I finally left {old}, my new place is in {v}",
        ],
    },
    "sister": {
        "values": ["Salzburg", "Graz", "Malmo", "Bergen", "Turku", "Seville", "Krakow",
                   "Nantes", "Trieste", "Dundee"],
        "names": ["Maren", "Ilse", "Nadia", "Greta", "Sofie", "Lotte", "Vera", "Anouk", "Elin",
                  "Mira"],
        "facts": lambda v, n: [("user", "has_sibling", n), (n, "lives_in", v)],
        "say": [
            "my sister {n} lives in {v}, I miss her",
            "{n}, my sister, has a small house in {v}",
            "I visited my sister {n} in {v} last year",
        ],
        "near": [
            "my neighbour's sister is visiting from {d} this week",
            "my coworker's sister works in {d}",
        ],
        "ask": [
            "where's my sister based again?",
            "in which city does my sister live?",
        ],
    },
    "dog": {
        "values": ["Biscuit", "Pepper", "Rufus", "Mochi", "Juniper", "Otto", "Hazel", "Bruno",
                   "Pixel", "Clover"],
        "facts": lambda v: [("user", "has_pet", v)],
        "say": [
            "my dog is called {v}, he's a terrier",
            "{v}, my dog, chewed my shoes again",
            "took {v} for a long walk, my dog loves the park",
        ],
        "near": [
            "my friend's dog {d} is adorable",
            "there's a dog named {d} at the shelter I keep thinking about",
            "the neighbours got a puppy called {d}",
        ],
        "ask": [
            "what's my dog's name?",
            "what did I name my pup?",
        ],
    },
    "works_at": {
        "values": ["Nordwind Labs", "Ferro Logistics", "Bluefin Bank", "Oakleaf Studio",
                   "Tessera Health", "Corvid Games", "Lumen Energy", "Halden Books",
                   "Quarry Robotics", "Saltmarsh Media"],
        "facts": lambda v: [("user", "works_at", v)],
        "say": [
            "I work at {v}, mostly on the data team",
            "I'm an engineer at {v}",
            "my job is at {v}, been there three years",
        ],
        "near": [
            "my brother works at {d} and he hates it",
            "I had an interview invite from {d}, I said no",
            "{d} is hiring, a friend told me",
        ],
        "ask": [
            "who's my employer?",
            "which company pays my salary?",
        ],
        "correct": [
            "I changed jobs, I work at {v} now instead of {old}",
            "last week was my first at {v}, I left {old}",
        ],
    },
    "favourite_food": {
        "values": ["bibimbap", "ramen", "paella", "pho", "risotto", "pierogi", "falafel",
                   "lasagne", "dumplings", "tacos"],
        "facts": lambda v: [("user", "favourite_food", v)],
        "say": [
            "my favourite food is {v}, I could eat it every day",
            "nothing beats {v}, it's my favourite dish",
            "if I had to pick one meal forever it'd be {v}",
        ],
        "near": [
            "my partner can't stand {d}",
            "tried {d} yesterday at a new place, it was ok",
            "there's a {d} festival in town this weekend",
        ],
        "ask": [
            "what dish do I love most?",
            "what meal would I pick forever?",
        ],
        "correct": [
            "forget {old}, these days it's {v}, my new favourite",
            "I'm over {old}, {v} is my favourite food now",
        ],
    },
    "allergy": {
        "values": ["peanuts", "shellfish", "sesame", "kiwi", "walnuts", "mustard", "celery",
                   "lupin", "soy", "mango"],
        "facts": lambda v: [("user", "allergic_to", v)],
        "say": [
            "I'm allergic to {v}, so I always check labels",
            "careful with {v} around me, I'm allergic",
        ],
        "near": [
            "my cousin is allergic to {d}",
            "the cafe put {d} in everything, weird choice",
        ],
        "ask": [
            "what can't I eat because of my allergy?",
            "what am I allergic to?",
        ],
    },
    "instrument": {
        "values": ["cello", "trumpet", "banjo", "clarinet", "harp", "drums", "oboe",
                   "accordion", "ukulele", "saxophone"],
        "facts": lambda v: [("user", "plays", v)],
        "say": [
            "I play the {v} in a small amateur orchestra",
            "practised the {v} for an hour tonight",
        ],
        "near": [
            "my son wants to learn the {d}",
            "heard someone busking on a {d}, so good",
        ],
        "ask": [
            "which instrument do I play?",
            "what do I practise music on?",
        ],
    },
    "car": {
        "values": ["Skoda Octavia", "Volvo V60", "Fiat Panda", "Mazda MX-5", "Renault Zoe",
                   "Toyota Yaris", "Kia Niro", "Seat Leon", "Dacia Duster", "Honda Jazz"],
        "facts": lambda v: [("user", "drives", v)],
        "say": [
            "I drive a {v}, it's old but reliable",
            "my car is a {v}, needs new tyres",
        ],
        "near": [
            "my neighbour bought a {d}, very shiny",
            "rented a {d} on holiday once",
        ],
        "ask": [
            "what car do I have?",
            "what am I driving these days?",
        ],
    },
    "hometown": {
        "values": ["Galway", "Coimbra", "Innsbruck", "Gdansk", "Lille", "Aberdeen", "Parma",
                   "Ljubljana", "Rouen", "Tartu"],
        "facts": lambda v: [("user", "hometown", v)],
        "say": [
            "I grew up in {v}, near the old harbour",
            "{v} is where I'm from originally",
        ],
        "near": [
            "my wife grew up in {d}",
            "we drove through {d} on the way back",
        ],
        "ask": [
            "where am I originally from?",
            "which town did I grow up in?",
        ],
    },
}

FILLER = [
    "had {meal} for lunch, pretty good",
    "the weather was {weather} all day",
    "watching {show} tonight, no spoilers please",
    "work was {mood} today",
    "did you see the news about {topic}?",
    "I'm thinking about learning {skill}",
    "how would you cook {meal} at home?",
    "can you recommend a book about {topic}?",
    "I went for a run this morning, {weather} but nice",
    "my phone battery died again, so annoying",
    "what do you think about {topic}?",
    "just finished cleaning the kitchen",
    "any tips for sleeping better?",
    "I'm so tired today",
    "the train was late again",
    "I bought new headphones, they sound {mood}",
    "we played board games all evening",
    "should I try {skill} or is that silly?",
    "the neighbours are having a party, so loud",
    "I need a holiday",
    "coffee or tea this afternoon?",
    "tell me something interesting about {topic}",
    "my plants are finally growing",
    "I watched a documentary about {topic}",
    "lol that's funny",
    "ok thanks",
    "hmm, not sure about that",
    "what should I do this weekend?",
]
WORDS = {
    "meal": ["soup", "a sandwich", "salad", "leftover curry", "toast", "an omelette", "noodles"],
    "weather": ["grey", "sunny", "windy", "rainy", "cold", "muggy"],
    "show": ["a crime drama", "a cooking show", "the football", "an old sitcom", "a nature series"],
    "mood": ["busy", "boring", "stressful", "fine", "great", "weird"],
    "topic": ["space", "the elections", "bees", "volcanoes", "old castles", "electric cars",
              "chess", "the ocean"],
    "skill": ["pottery", "Spanish", "knitting", "rock climbing", "baking bread", "photography"],
}


def fill(rng, template):
    out = template
    for key, words in WORDS.items():
        while "{" + key + "}" in out:
            out = out.replace("{" + key + "}", rng.choice(words), 1)
    return out


def facts(slot, value, name=None):
    made = SLOTS[slot]["facts"](value, name) if slot == "sister" else SLOTS[slot]["facts"](value)
    return [{"subject": s, "predicate": p, "object": o} for s, p, o in made]


def main():
    rng = random.Random(SEED)
    slots = list(SLOTS)
    # Each user gets a disjoint value per slot; the values nobody has are the distractors' pool.
    assigned = {slot: rng.sample(range(len(SLOTS[slot]["values"])), USERS + 1) for slot in slots}
    users = []
    for u in range(USERS):
        chosen = rng.sample(slots, 9)
        correctable = [s for s in chosen if "correct" in SLOTS[s]]
        corrected = set(rng.sample(correctable, min(2, len(correctable))))
        value = {s: SLOTS[s]["values"][assigned[s][u]] for s in chosen}
        names = {"sister": SLOTS["sister"]["names"][assigned["sister"][u]]}
        new_value = {s: SLOTS[s]["values"][assigned[s][USERS]] for s in corrected}
        taken = {s: {SLOTS[s]["values"][i] for i in assigned[s][: USERS + 1]} for s in slots}

        # Positions: planted statements in the first half, corrections in the last quarter,
        # near-distractors anywhere, filler everywhere else.
        events = []
        for s in chosen:
            events.append((rng.uniform(0.02, 0.5), "say", s))
            for _ in range(2):
                events.append((rng.uniform(0.0, 1.0), "near", s))
            if s in corrected:
                events.append((rng.uniform(0.75, 0.95), "correct", s))
        events.sort()
        slots_at = sorted(rng.sample(range(MESSAGES_PER_USER), len(events)))
        messages = []
        e = 0
        for i in range(MESSAGES_PER_USER):
            day = round(DAYS * i / MESSAGES_PER_USER + rng.uniform(0, 0.5), 3)
            if e < len(events) and slots_at[e] == i:
                _, what, s = events[e]
                e += 1
                slot = SLOTS[s]
                if what == "say":
                    v = value[s]
                    text = rng.choice(slot["say"]).format(v=v, n=names["sister"])
                    messages.append({"day": day, "text": text, "facts": facts(s, v, names["sister"])})
                elif what == "correct":
                    v, old = new_value[s], value[s]
                    text = rng.choice(slot["correct"]).format(v=v, old=old)
                    fs = facts(s, v)
                    for f in fs:
                        f["replaces"] = old
                    messages.append({"day": day, "text": text, "facts": fs})
                else:
                    pool = [x for x in slot["values"] if x not in taken[s]]
                    text = rng.choice(slot["near"]).format(d=rng.choice(pool))
                    messages.append({"day": day, "text": text, "facts": []})
            else:
                messages.append({"day": day, "text": fill(rng, rng.choice(FILLER)), "facts": []})
        questions = []
        for s in chosen:
            # Two paraphrases of the question per fact.
            for ask in rng.sample(SLOTS[s]["ask"], 2):
                if s in corrected:
                    questions.append({"slot": s, "text": ask, "expect": new_value[s],
                                      "stale": value[s], "kind": "corrected"})
                else:
                    questions.append({"slot": s, "text": ask, "expect": value[s],
                                      "stale": None, "kind": "planted"})
        rng.shuffle(questions)
        users.append({"id": f"recall:{u}", "messages": messages, "questions": questions})

    out = {"seed": SEED, "days": DAYS, "users": users}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conversations.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    planted = sum(len(u["questions"]) for u in users)
    print(f"wrote {path}: {USERS} users, {USERS * MESSAGES_PER_USER} messages, {planted} questions")


if __name__ == "__main__":
    main()
