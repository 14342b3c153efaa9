"""Regenerate `data/concept_agnostic_prompts.jsonl` (deterministic; no randomness).

    python -m dbdpo.prompts._make_agnostic [--check]

Hand-written phrase lists, each tied to one of several sentence shapes per category, so the prompts
vary in structure rather than swapping nouns in one template. `live` groups hold prompts that only make
sense for a living subject (clothes worn, actions, body parts); everything else also suits objects.
Each category is cut to exactly 200 by dropping the last phrase of the currently longest group, so the
sentence shapes stay balanced. `--check` only verifies that the shipped file matches.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PER_CATEGORY = 200
OUT = Path(__file__).parent / "data" / "concept_agnostic_prompts.jsonl"


def _article(phrase: str) -> str:
    return "an" if phrase[0].lower() in "aeiou" and not phrase.lower().startswith(("one", "uni", "eu")) else "a"


def _adj(adjs: list[str]) -> list[str]:
    return [f"{_article(a)} {a} [V*]" for a in adjs]


def _t(template: str, fillers: list[str]) -> list[str]:
    return [template.format(f) for f in fillers]


# Each group: (live_only, prompts).
APPEARANCE = [
    (False, _adj([
        "neon-lit", "silver-plated", "rain-soaked", "sunlit",
        "moonlit", "translucent", "iridescent", "holographic", "chrome-plated",
        "glow-in-the-dark", "pastel pink", "jet-black", "snow-white", "turquoise", "emerald green",
        "bright orange", "sky-blue", "lime green", "crimson", "polka-dotted", "checkered",
        "rainbow-colored", "gold-leafed", "mud-splattered", "dust-covered", "weathered",
        "velvety", "metallic blue", "pearly white", "copper-colored", "tie-dyed",
        "camouflage-patterned", "leopard-print", "backlit",
        "sun-bleached", "ghostly pale", "charcoal gray", "lavender", "ruby red", "mint green",
        "glossy black", "matte white", "burnt orange",
    ])),
    (False, _t("a [V*] made of {}", [
        "glass", "polished wood", "white marble", "dark chocolate", "colorful toy bricks",
        "folded paper", "uncooked pasta", "solid gold", "knitted wool", "modeling clay", "crystal", "porcelain",
        "stained glass", "cardboard", "twisted copper wire", "felt", "recycled plastic", "woven straw",
        "jelly", "cotton candy", "driftwood", "sea glass", "brass gears", "bamboo", "terracotta",
        "autumn leaves", "soap bubbles", "clouds", "lace", "sushi rice",
    ])),
    (False, _t("a [V*] made of {}", [
        "brushed steel", "bubble gum", "neon tubes", "gingerbread", "mismatched buttons",
        "Swiss cheese", "obsidian", "velvet",
    ])),
    (False, _t("a [V*] painted like {}", [
        "a ladybug", "a watermelon", "a tiger", "a strawberry", "a fire truck", "a sunflower",
        "a pineapple",
    ])),
    (False, _t("a [V*] in shades of {}", [
        "teal", "sunset orange", "deep violet", "sea green", "dusty rose",
    ])),
    (False, _t("a [V*] with {} texture", [
        "a fuzzy", "a bumpy reptile-skin", "a quilted", "a wood-grain", "a honeycomb",
    ])),
    (False, _t("a [V*] covered in {}", [
        "frost", "fresh snow", "green moss", "fine glitter", "tiny flowers", "morning dew",
        "golden sand", "colorful sprinkles", "climbing ivy", "soot", "powdered sugar",
        "confetti", "sequins", "spiderwebs", "dried mud", "bright graffiti",
    ])),
    (False, _t("a [V*] with {}", [
        "zebra stripes", "a rainbow gradient", "a mirror finish", "a glossy lacquer finish",
        "glowing blue veins", "a galaxy pattern", "a cracked porcelain surface", "a faded vintage look",
        "a marbled swirl pattern", "a checkerboard pattern", "glowing circuit lines",
        "peeling paint", "a coat of rust",
    ])),
    (True, _t("a [V*] with {}", [
        "glowing eyes", "shaggy fur", "curly fur", "spotted fur", "bright blue eyes",
        "fur dyed pink", "a braided mane", "frosted whiskers",
    ])),
    (False, _t("a [V*] lit by {}", [
        "candlelight", "a single spotlight", "the glow of a campfire", "warm sunset light",
        "the blue glow of an aquarium", "flashing disco lights", "a pink neon sign", "the flicker of a television",
        "colorful stage lights", "a string of fairy lights", "paper lanterns", "a flash of lightning",
    ])),
    (False, [
        "a [V*] glowing softly in the dark", "a [V*] glowing with an inner light",
        "a [V*] glowing like hot embers", "a [V*] shimmering with oil-slick colors",
        "a [V*] sparkling like a disco ball", "a [V*] casting a long shadow at sunset",
        "a [V*] in silhouette against a bright window", "a [V*] bathed in golden light",
    ]),
    (False, [
        "a tiny [V*] perched on a fingertip", "a gigantic [V*] towering over the houses",
        "a [V*] the size of a skyscraper", "a [V*] no bigger than a coin",
        "a miniature [V*] in the palm of a hand", "an enormous [V*] next to a tiny person",
        "a [V*] as big as a bus",
    ]),
    (False, [
        "a [V*] carved out of jade", "a [V*] carved from a block of ice", "a [V*] sculpted from sand",
        "a [V*] sculpted from butter", "a [V*] carved out of a pumpkin", "a [V*] molded from wax",
        "a [V*] cast in bronze", "a [V*] assembled from scrap metal", "a [V*] woven from wicker",
        "a [V*] built out of toothpicks", "a [V*] stitched together from patchwork fabric",
        "a [V*] formed from swirling smoke", "a [V*] shaped out of balloons",
        "a [V*] pieced together from broken tiles",
    ]),
    (False, _adj([
        "black and gold", "blue and white", "red and black", "pink and mint green",
        "silver and turquoise", "orange and purple", "green and gold", "navy and cream",
    ])),
    (False, [
        "a [V*] that looks like it is melting", "a [V*] that looks freshly painted",
        "a [V*] that looks a hundred years old", "a [V*] that seems to be made of light",
        "a [V*] that appears to be frozen solid", "a [V*] that looks like a ghost",
    ]),
    (False, [
        "a [V*] dripping with paint", "a [V*] dripping with honey", "a [V*] dripping with melted chocolate",
        "a [V*] encrusted with jewels", "a [V*] studded with rivets", "a [V*] inlaid with mother-of-pearl",
        "a [V*] dusted with pollen", "a [V*] splashed with watercolor paint",
        "a [V*] speckled with tiny stars", "a [V*] wrapped in flames", "a [V*] half turned to stone",
        "a [V*] fading into pixels", "a [V*] made entirely of light bulbs",
    ]),
]

OUTFIT = [
    (True, _t("a [V*] wearing {}", [
        "a knitted scarf", "a wool sweater", "a bow tie", "a denim jacket", "a flower crown",
        "a cowboy hat", "a baseball cap", "a trapper hat", "a pair of sunglasses", "a graduation cap",
        "a sparkling tiara", "a propeller hat", "a hoodie", "a Hawaiian shirt", "a pearl necklace",
        "a striped sweater", "a feather boa", "a life jacket", "ski goggles", "big headphones",
        "a sombrero", "a beret", "a bucket hat", "a turtleneck", "a plaid flannel shirt",
        "an ugly Christmas sweater", "rain boots", "a crown of laurel leaves", "a superhero cape",
        "a fluffy bathrobe", "a sailor hat", "a Viking helmet", "a fez", "a poncho", "a puffer jacket",
        "a tracksuit", "denim overalls", "a straw sun hat", "a name badge and a lanyard",
        "a knitted hat with a pompom", "a leather belt with a big buckle", "a tiny backpack",
        "a racing helmet",
    ])),
    (True, _t("a [V*] in {}", [
        "a biker jacket", "a tuxedo", "a kimono", "a spacesuit", "a suit of knight's armor",
        "a white lab coat", "a tweed suit", "a puffy winter coat", "a trench coat", "samurai armor",
        "a scuba diving suit", "a ski suit", "a Victorian dress", "a business suit and tie",
        "striped pajamas", "a toga", "a leather aviator jacket", "a sequined dress",
        "a hooded cloak", "a school uniform", "a racing suit", "a referee shirt", "a beekeeper suit",
        "a hazmat suit", "a yellow raincoat and matching boots", "a green hoodie and sneakers",
        "a pink tutu and ballet shoes", "a red cape and a golden mask",
        "a denim vest covered in patches", "a tartan kilt",
        "a marching band uniform", "a cheerleader outfit",
    ])),
    (True, _t("a [V*] dressed as {}", [
        "a pirate", "an astronaut", "a medieval knight", "a cowboy", "a mad scientist",
        "a rock star", "a king", "a ninja", "a lumberjack", "a sailor", "a clown", "an airline pilot",
        "a gardener", "a mail carrier", "a magician", "a ghost", "a bumblebee", "a dinosaur",
        "a unicorn", "a flamenco dancer", "a painter", "a Roman emperor",
    ])),
    (True, _t("a [V*] dressed up for {}", [
        "a wedding", "Halloween", "a night at the opera", "a ski trip", "a costume party",
        "a day at the beach", "New Year's Eve", "a job interview",
    ])),
    (True, _t("a [V*] with {} around its neck", [
        "a red bandana", "a garland of daisies", "a golden bell", "a spiked collar",
        "a lei of orchids", "a knitted cowl", "a medal on a ribbon",
    ])),
    (True, _t("a [V*] sporting {}", [
        "a handlebar mustache", "a pair of aviator goggles", "a rainbow wig", "a fake beard",
        "a tiny monocle",
    ])),
    (False, _t("a [V*] wrapped in {}", [
        "a silk ribbon", "shiny gift paper", "a string of fairy lights", "bubble wrap",
        "a plaid blanket", "old newspaper", "aluminum foil", "burlap", "brown paper and twine",
        "a lace veil", "colorful yarn", "cellophane", "a Christmas garland", "a striped towel",
        "a patterned silk scarf", "a knitted blanket", "a tea towel",
    ])),
    (False, _t("a [V*] decorated with {}", [
        "stickers", "glitter glue", "tiny seashells", "pearls", "rhinestones", "holiday ornaments",
        "paper flowers", "enamel pins", "painted daisies", "hand-drawn doodles", "googly eyes",
        "tiny mirrors", "embroidered patches", "pressed flowers", "bottle caps", "candy canes",
        "colorful feathers", "Easter eggs",
    ])),
    (False, _t("a [V*] decorated with {}", [
        "washi tape", "lace trim", "dried lavender", "hand-painted stars", "gold studs",
    ])),
    (False, _t("a [V*] with {} pinned to it", [
        "a sheriff's badge", "a corsage", "a rosette ribbon", "a campaign button",
    ])),
    (False, _t("a [V*] tied with {}", [
        "a big red bow", "rough twine", "a satin ribbon", "a string of wooden beads",
    ])),
    (False, _t("a [V*] with {} on top", [
        "a tiny party hat", "a miniature crown", "a knitted beanie", "a small straw hat",
        "a paper pirate hat", "a little witch hat", "a tiny bowler hat",
    ])),
    (False, _t("a [V*] draped in {}", [
        "a velvet cloak", "a lace doily", "a flag", "a tartan shawl", "a sheer curtain",
        "a fishing net", "a royal purple cape", "tinsel",
    ])),
    (False, _t("a [V*] adorned with {}", [
        "flower garlands", "gold chains", "fresh roses", "tiny bells", "a peacock feather",
        "jeweled brooches", "silver charms",
    ])),
    (False, [
        "a [V*] in a knitted cozy", "a [V*] in a crocheted cover", "a [V*] in a quilted case",
        "a [V*] with a name tag tied to it", "a [V*] with a price tag hanging from it",
        "a [V*] with a tiny scarf tied around it", "a [V*] with a little cape tied to it",
        "a [V*] with a flower tucked into it", "a [V*] strung with tiny lanterns",
        "a [V*] with a bow tie fastened to it", "a [V*] with a string of bunting draped across it",
        "a [V*] with a garland of ivy wound around it", "a [V*] with a tiny pair of sunglasses perched on it",
        "a [V*] dressed in a tiny knitted sweater", "a [V*] in a Santa costume made of felt",
    ]),
]

BACKGROUND = [
    (False, _t("a [V*] in {}", [
        "a cave", "a bamboo forest", "a library", "a neon-lit arcade", "a greenhouse", "a desert",
        "a busy train station", "an art gallery", "a Japanese garden", "a lavender field",
        "a Moroccan market", "a subway car", "a bakery", "a medieval castle hall", "a laundromat",
        "a misty swamp", "an abandoned factory", "a flower shop", "a candlelit cathedral",
        "a science lab", "a ballroom", "a barn full of hay", "a record store", "a rooftop garden",
        "an ice cave", "a canyon", "a cozy log cabin", "a music studio", "a children's playroom",
        "a vineyard", "a botanical garden", "a mountain meadow", "a foggy harbor",
        "a cherry orchard", "a spaceship cockpit", "an old bookshop", "a tropical rainforest",
        "a snowy pine forest", "Venice", "a diner at night", "a coral reef",
    ])),
    (False, _t("a [V*] in {}", [
        "a salt flat", "a lava field", "an old-fashioned barbershop", "a treehouse",
        "a bowling alley", "an airport lounge", "a planetarium", "a candy shop", "a hot spring",
        "a birch forest", "a jazz club", "an olive grove", "a Greek island village",
        "an Arctic research station",
    ])),
    (False, _t("a [V*] by {}", [
        "a crystal-clear mountain stream", "a lily pond", "the fountain in a town square",
        "a roaring river",
    ])),
    (False, _t("a [V*] among {}", [
        "ancient temple ruins", "the stalls of a flea market", "the crowds of Times Square",
        "snow-covered tents at a base camp",
    ])),
    (False, _t("a [V*] with {} behind it", [
        "a marching band", "a herd of elephants", "an ancient stone circle",
    ])),
    (False, _t("a [V*] with {} in the background", [
        "hot air balloons", "the northern lights", "a lighthouse", "a waterfall",
        "the Golden Gate Bridge", "Mount Fuji", "a fairytale castle", "an erupting volcano",
        "the pyramids of Giza", "a full moon", "fireworks", "the Colosseum", "a rainbow", "Big Ben",
        "a Ferris wheel", "snow-capped peaks", "skyscrapers at night", "the Taj Mahal",
        "the Great Wall of China", "palm trees", "sand dunes", "a row of colorful houses",
        "a steam train", "a field of wind turbines", "a medieval village",
    ])),
    (False, _t("a [V*] with {} on the horizon", [
        "windmills", "a thunderstorm", "a sailing ship", "a setting sun", "a city skyline",
        "a distant mountain range", "a line of camels",
    ])),
    (False, _t("a [V*] at {}", [
        "a night market", "the edge of a waterfall", "a carnival", "a farmers' market",
        "a bus stop in the rain", "a ski resort", "a campsite at night", "a rooftop party",
        "the top of a skyscraper", "a crowded concert", "a quiet café", "a gas station at night",
        "the finish line of a race", "a Christmas market", "an old fishing harbor",
    ])),
    (False, _t("a [V*] in front of {}", [
        "a graffiti wall", "a red barn", "a stained glass window", "an old brick fireplace",
        "a vintage diner", "a tall bookshelf", "a shop window", "a velvet theater curtain",
        "a white picket fence", "an ancient temple", "the Sydney Opera House",
        "the Statue of Liberty", "a huge aquarium tank", "a cinema screen", "a wall of ivy",
        "a row of vending machines",
    ])),
    (False, _t("a [V*] under {}", [
        "cherry blossoms", "a starry sky", "a stone bridge", "a canopy of autumn leaves",
        "a sky full of lanterns", "a tropical waterfall", "an old oak tree", "a wisteria pergola",
        "a swirling galaxy", "a circus tent",
    ])),
    (False, _t("a [V*] surrounded by {}", [
        "fireflies", "tulips", "falling autumn leaves", "butterflies", "snowflakes",
        "floating lanterns", "rose petals", "towering cacti", "tall grass", "seashells",
        "pumpkins", "glowing mushrooms", "colorful balloons", "stacks of old books", "koi fish",
        "lotus flowers",
    ])),
    (False, _t("a [V*] against a backdrop of {}", [
        "a pink sunset", "rolling green hills", "crashing waves", "drifting icebergs",
        "terraced rice fields", "misty mountains", "red rock canyons", "towering sequoias",
        "swirling snow",
    ])),
    (False, [
        "a [V*] on a wooden pier at a quiet lake", "a [V*] on a mossy rock in a misty forest",
        "a [V*] on a park bench in autumn", "a [V*] on a rooftop overlooking Paris",
        "a [V*] on a frozen lake at dawn", "a [V*] on a sand dune at sunset",
        "a [V*] on a balcony in Santorini", "a [V*] on a snowy mountain peak",
        "a [V*] on a street corner in New York", "a [V*] on the steps of an old church",
        "a [V*] on a picnic blanket in a meadow", "a [V*] on a rocky shore at low tide",
        "a [V*] on a glacier under a blue sky", "a [V*] on a train platform in the fog",
        "a [V*] on a tiled terrace in Lisbon",
    ]),
    (False, [
        "a [V*] on a foggy morning in a pine forest", "a [V*] on a rainy night in Tokyo",
        "a [V*] during a thunderstorm on the prairie", "a [V*] during a sandstorm in the Sahara",
        "a [V*] on a snowy evening in a small village", "a [V*] at dawn in a misty valley",
        "a [V*] at golden hour in a field of barley", "a [V*] at midnight in an empty parking lot",
        "a [V*] in autumn in Central Park", "a [V*] at sunrise on a mountain ridge",
        "a [V*] during cherry blossom season in Kyoto", "a [V*] on a hot summer day in Rome",
    ]),
    (False, _t("a [V*] in the middle of {}", [
        "a frozen lake", "a busy crossroads", "a sunflower field", "a hedge maze", "a dense fog",
        "a meteor shower", "a desert highway", "a field of poppies",
    ])),
    (False, [
        "a [V*] floating in outer space with Earth behind it", "a [V*] underwater among tropical fish",
        "a [V*] on the surface of the moon", "a [V*] on a distant planet with two suns",
        "a [V*] in a bubble deep under the sea", "a [V*] on a cloud high above the city",
    ]),
]

STYLE = [
    (False, _t("a [V*] in {} style", [
        "steampunk", "art nouveau", "ukiyo-e", "pop art", "cyberpunk", "art deco", "cubist",
        "impressionist", "baroque", "vaporwave", "Bauhaus", "low-poly", "pixel art", "anime",
        "gothic", "minimalist", "retro 1980s", "synthwave", "film noir", "Renaissance",
        "Memphis design", "psychedelic 1960s", "comic book", "claymation", "Scandinavian folk art",
        "Mexican folk art", "Chinese ink wash", "ancient Egyptian", "surrealist", "pointillist",
        "expressionist", "fauvist", "rococo", "kawaii", "chibi", "Victorian", "Y2K",
        "glitch art", "cel-shaded", "dieselpunk",
        "Soviet constructivist", "cottagecore", "solarpunk", "Dutch Golden Age", "Pre-Raphaelite",
        "traditional tattoo", "Celtic knotwork", "Persian miniature", "retro-futurist",
        "1950s advertisement",
    ])),
    (False, [f"{_article(m)} {m} of a [V*]" for m in [
        "watercolor painting", "charcoal sketch", "oil painting", "pencil drawing", "linocut print",
        "mosaic", "embroidered patch", "woodcut", "marble statue", "bronze statue", "pastel drawing",
        "gouache painting", "ink drawing", "graffiti mural", "sidewalk chalk drawing", "fresco",
        "tapestry", "cross-stitch pattern", "blueprint", "3D render", "paper cutout",
        "cave painting", "vintage travel poster", "movie poster", "tarot card", "postage stamp",
        "comic strip", "children's book illustration", "scientific illustration", "technical drawing",
        "etching", "screen print", "risograph print", "holographic trading card", "sticker design",
        "Byzantine icon", "illuminated manuscript page", "sand painting",
        "papier-mache sculpture", "bas-relief", "spray-paint stencil", "patchwork quilt",
        "lithograph", "cyanotype",
    ]]),
    (False, [f"{_article(p)} {p} photo of a [V*]" for p in [
        "polaroid", "black and white", "double exposure", "long-exposure", "tilt-shift",
        "fisheye", "infrared", "sepia-toned", "macro", "grainy 35mm film", "vintage 1920s",
        "aerial drone", "overexposed", "high-speed flash",
    ]]),
    (False, [
        "a [V*] photographed with a pinhole camera", "a [V*] captured on an old camcorder",
        "a [V*] shot on expired film", "a [V*] seen through night-vision goggles",
        "a [V*] in a thermal camera image", "a [V*] in a security camera still",
    ]),
    (False, _t("a [V*] in the style of {}", [
        "Van Gogh", "Claude Monet", "Gustav Klimt", "Hokusai", "Picasso", "Rembrandt",
        "Johannes Vermeer", "Alphonse Mucha", "Rene Magritte", "Salvador Dali", "Henri Matisse",
        "J. M. W. Turner", "Paul Cezanne", "Georges Seurat", "Frida Kahlo", "Edvard Munch",
        "Andy Warhol", "Roy Lichtenstein", "Wassily Kandinsky", "Piet Mondrian",
        "Hieronymus Bosch", "Edward Hopper", "Keith Haring",
    ])),
    (False, _t("a [V*] rendered as {}", [
        "a clay figurine", "a wireframe model", "a voxel sculpture", "a paper collage",
        "a neon line drawing", "a flat vector icon", "ASCII art", "a cardboard cutout",
    ])),
    (False, [
        "a [V*] as a superhero on a pulp magazine cover", "a [V*] as a figure painted on an ancient Greek vase",
        "a [V*] as a paper puppet in a shadow play", "a [V*] as a terracotta warrior",
        "a [V*] as an emoji", "a [V*] as a cartoon mascot", "a [V*] as a chess piece",
        "a [V*] as a character in a silent film",
    ]),
    (False, _t("a [V*] drawn with {}", [
        "crayons", "chalk on a blackboard", "a ballpoint pen", "colored pencils", "a fountain pen",
        "markers on a whiteboard", "felt-tip pens", "a stick in wet sand",
    ])),
    (False, [
        "a pencil sketch of a [V*] on lined notebook paper",
        "a watercolor of a [V*] with loose, splashy brushstrokes",
        "an oil painting of a [V*] with thick impasto brushstrokes",
        "a minimalist line drawing of a [V*] on a white background",
        "a faded fresco of a [V*] on a crumbling wall",
        "a pop art print of a [V*] repeated in four bright colors",
        "a Renaissance portrait of a [V*] in a gilded frame",
        "a rough storyboard sketch of a [V*]",
        "a coloring book page with a [V*]",
        "a doodle of a [V*] in the margin of a notebook",
        "a detailed engraving of a [V*] on an old banknote",
        "a child's drawing of a [V*] stuck on a fridge",
    ]),
    (False, [f"{_article(a)} {a} illustration of a [V*]" for a in [
        "whimsical", "isometric", "hand-inked manga", "retro science fiction", "fairytale",
        "loose ink and wash",
    ]]),
    (False, _t("a [V*] painted on {}", [
        "a ceramic plate", "a paper fan", "the side of a truck", "a smooth pebble",
        "a Russian nesting doll", "a silk scroll",
    ])),
    (False, [
        "a film still of a [V*] from a 1950s sci-fi movie", "a [V*] in a scene from a spaghetti western",
        "a [V*] in a scene from a horror movie", "a [V*] in a scene from a Technicolor musical",
        "a [V*] in a scene from a stop-motion animation", "a [V*] in a scene from a Bollywood dance number",
    ]),
    (False, [
        "a [V*] photographed in a professional studio", "a paparazzi shot of a [V*]",
        "a product shot of a [V*] on a seamless backdrop",
        "a cinematic still of a [V*] with anamorphic lens flare", "a selfie with a [V*]",
        "a [V*] on a glossy magazine cover", "a passport photo of a [V*]",
        "a blurry motion shot of a [V*]", "a vintage daguerreotype of a [V*]",
        "a [V*] in a 1990s disposable camera photo",
    ]),
    (False, [
        "a [V*] on a medieval coat of arms", "a [V*] printed on a T-shirt",
        "a [V*] on a vintage cereal box", "a [V*] on a retro lunchbox",
    ]),
]

POSITION = [
    (True, [
        "a [V*] running through a meadow", "a [V*] jumping over a puddle", "a [V*] sleeping on a couch",
        "a [V*] swimming in a lake", "a [V*] yawning", "a [V*] stretching after a nap",
        "a [V*] playing in a pile of leaves", "a [V*] chasing a butterfly", "a [V*] catching a frisbee",
        "a [V*] digging in the sand", "a [V*] rolling in the grass", "a [V*] howling at the moon",
        "a [V*] climbing a tree", "a [V*] drinking from a fountain",
        "a [V*] eating a slice of watermelon", "a [V*] reading a book", "a [V*] playing the piano",
        "a [V*] dancing in the rain", "a [V*] taking a bubble bath", "a [V*] waving hello",
        "a [V*] splashing through shallow water", "a [V*] sniffing a flower",
        "a [V*] licking an ice cream cone", "a [V*] blowing out birthday candles",
        "a [V*] wading into the sea", "a [V*] walking on a leash", "a [V*] doing yoga",
        "a [V*] painting on an easel", "a [V*] pushing a shopping cart", "a [V*] carrying a stick",
    ]),
    (True, _t("a [V*] riding {}", [
        "a scooter", "a unicycle", "a bicycle", "a horse", "a roller coaster", "a surfboard",
        "a motorcycle", "a sled down a hill", "a tricycle", "a carousel horse",
    ])),
    (True, [
        "a [V*] curled up in a basket", "a [V*] lying in a hammock", "a [V*] standing on its hind legs",
        "a [V*] hiding under a blanket", "a [V*] napping in a sunbeam", "a [V*] lying on its back",
        "a [V*] sitting by the fireplace", "a [V*] stretched out on a sun lounger",
        "a [V*] sitting on a swing", "a [V*] sitting at a dinner table",
    ]),
    (True, _t("a [V*] playing {}", [
        "with a ball of yarn", "fetch in the park", "chess", "the guitar", "in the snow",
        "hide and seek behind a tree",
    ])),
    (True, _t("a [V*] driving {}", ["a red convertible", "a tractor", "a bumper car", "a go-kart"])),
    (True, [
        "a [V*] looking up at the camera", "a [V*] looking out of a train window",
        "a [V*] gazing at the stars", "a [V*] watching the rain through a window",
    ]),
    (False, _t("a [V*] resting on {}", [
        "a stack of books", "a windowsill", "a pile of pillows", "a mossy log", "a rocking chair",
        "a wooden crate", "a marble countertop", "an old suitcase", "a velvet cushion",
    ])),
    (False, _t("a [V*] balanced on {}", [
        "a fence post", "the edge of a cliff", "a stack of plates", "a tightrope", "a beach ball",
    ])),
    (False, _t("a [V*] hanging from {}", [
        "a tree branch", "a hook on the wall", "a hot air balloon", "a clothesline",
        "a coat rack",
    ])),
    (False, _t("a [V*] peeking out of {}", [
        "a cardboard box", "a paper bag", "a gift box", "a flower pot", "a mailbox",
        "a coat pocket",
    ])),
    (False, _t("a [V*] inside {}", [
        "a glass jar", "a birdcage", "a snow globe", "a shopping cart", "a vending machine",
        "a treasure chest", "a soap bubble", "a washing machine",
    ])),
    (False, [
        "a [V*] in the basket of a bicycle", "a [V*] on the back seat of a car",
        "a [V*] on the dashboard of a truck", "a [V*] in the window of a toy shop",
        "a [V*] on the shelf of a bookstore", "a [V*] on a conveyor belt at an airport",
        "a [V*] on a tray in a busy restaurant",
    ]),
    (False, [
        "a close-up of a [V*]", "a [V*] seen from above", "a [V*] seen from a low angle",
        "a [V*] seen from behind", "a [V*] seen through a rain-streaked window",
        "a side view of a [V*]", "an overhead shot of a [V*] on a tiled floor",
        "a [V*] reflected in a puddle", "a [V*] reflected in a shop window",
        "a [V*] partly hidden behind a curtain", "a [V*] upside down", "a [V*] tipped over on its side",
        "a [V*] half buried in sand", "a [V*] half submerged in a pond",
        "a [V*] far away at the end of a long road",
    ]),
    (False, _t("a [V*] next to {}", [
        "a cup of coffee", "a stack of pancakes", "a sleeping kitten", "a vintage typewriter",
        "a potted cactus", "a giant pumpkin", "a snowman", "a campfire", "a red fire hydrant",
        "a spinning globe", "a pile of presents", "a lit jack-o'-lantern",
    ])),
    (False, [
        "a [V*] between two giant sunflowers", "a [V*] between two stone lions",
        "a [V*] among rows of cabbages in a garden",
    ]),
    (False, _t("a [V*] on top of {}", [
        "a car roof", "a grand piano", "a tall wedding cake", "a refrigerator", "a lighthouse",
    ])),
    (False, [
        "a [V*] floating in a swimming pool", "a [V*] flying through the clouds",
        "a [V*] falling from the sky", "a [V*] sliding down a playground slide",
        "a [V*] bouncing on a trampoline", "a [V*] drifting down a river",
        "a [V*] tumbling down a grassy hill",
    ]),
    (False, [
        "a [V*] being carried by a child", "a [V*] being held in someone's hands",
        "a [V*] being pulled in a wagon", "a [V*] being lifted by balloons",
        "a [V*] being photographed by a tourist", "a [V*] being examined under a magnifying glass",
        "a [V*] being hugged by a little girl",
    ]),
    (False, [
        "a [V*] on a skateboard", "a [V*] in a canoe on a calm river",
        "a [V*] in the sidecar of an old motorbike", "a [V*] on a toy train", "a [V*] in a rowboat",
        "a [V*] on a rolling office chair",
    ]),
    (False, [
        "a [V*] in the corner of an empty room", "a [V*] at the end of a long hallway",
        "a [V*] in the center of a round table", "a [V*] at the bottom of a swimming pool",
        "a [V*] at the top of a spiral staircase", "a [V*] in a row of identical boxes",
    ]),
    (False, _t("a [V*] tucked {}", [
        "into a picnic basket", "between books on a shelf", "between the sofa cushions",
    ])),
    (False, _t("a [V*] perched on {}", [
        "a garden wall", "a chimney", "a lamppost", "the rim of a fountain",
    ])),
    (False, _t("a [V*] lying {}", [
        "on a wet street", "on an unmade bed", "in a field of clover", "on a sandy path",
    ])),
    (False, _t("a [V*] left {}", [
        "on a train seat", "on a doorstep", "behind on an empty beach", "out in the rain",
    ])),
    (False, [
        "a [V*] displayed on a pedestal in a museum", "a [V*] in a glass display case",
        "a [V*] on a rotating stand", "a [V*] spinning in mid-air",
        "a [V*] suspended from the ceiling by strings", "a [V*] caught in a gust of wind",
        "a [V*] sinking slowly into deep water", "a [V*] under a bed", "a [V*] under a table at a party",
        "a [V*] under a tiny umbrella in the rain", "a [V*] under a glass dome",
        "a [V*] behind a frosted glass door", "a [V*] behind a stack of firewood",
    ]),
    (False, [
        "a child holding up a [V*]", "a woman carrying a [V*] down the street",
        "a man pointing at a [V*]", "a crowd gathered around a [V*]", "a robot inspecting a [V*]",
        "a toddler reaching for a [V*]",
    ]),
    (True, [
        "a [V*] peering over a fence", "a [V*] leaping into a pool",
        "a [V*] balancing a ball on its nose", "a [V*] napping in a pile of laundry",
        "a [V*] sticking its head out of a car window", "a [V*] begging for a treat",
        "a [V*] standing guard at a door", "a [V*] waiting at the front door",
        "a [V*] sneaking onto the kitchen counter",
    ]),
]

CATEGORIES = {
    "appearance": APPEARANCE,
    "outfit": OUTFIT,
    "background": BACKGROUND,
    "style": STYLE,
    "position": POSITION,
}


def normalise(prompt: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (the near-duplicate key)."""
    words = re.sub(r"[^\w\s]", " ", prompt.lower()).split()
    return " ".join(w for w in words if w not in {"a", "an", "the"})


def _trim(groups: list[tuple[bool, list[str]]], n: int) -> list[tuple[bool, list[str]]]:
    groups = [(live, list(ps)) for live, ps in groups]
    total = sum(len(ps) for _, ps in groups)
    if total < n:
        raise SystemExit(f"only {total} prompts, need {n}")
    while total > n:
        longest = max(range(len(groups)), key=lambda i: (len(groups[i][1]), -i))
        groups[longest][1].pop()
        total -= 1
    return groups


def build() -> list[dict]:
    """All rows, category by category, after checking uniqueness and the placeholder."""
    from dbdpo.prompts.dreambench import eval_prompts

    banned = {normalise(p) for live in (True, False) for w in ("full", "long") for p in eval_prompts(live, w)}
    rows, seen = [], set()
    for category, groups in CATEGORIES.items():
        for live_only, prompts in _trim(groups, PER_CATEGORY):
            for p in prompts:
                key = normalise(p)
                if p.count("[V*]") != 1 or key in seen or key in banned:
                    raise SystemExit(f"bad or duplicate prompt: {p!r}")
                seen.add(key)
                rows.append({"prompt": p, "category": category, "live_only": live_only})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in build())
    if "--check" in argv:
        ok = OUT.read_text(encoding="utf-8") == text
        print("up to date" if ok else f"{OUT} differs from the generator")
        return 0 if ok else 1
    from dbdpo.io import write_text

    write_text(OUT, text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
