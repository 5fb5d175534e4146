"""What COCO's 80 categories are for: the table reasoning queries are written from.

Each `Use` names the categories that answer it (`core`) and those a person might also count
(`maybe`: a bed to sit on, a phone to tell the time). A query about a use is only well defined when
no `maybe` instance is in the image, since then nobody can argue about its answer set.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["USES", "Use", "uses_of"]


@dataclass(frozen=True)
class Use:
    name: str  # the spec's "use" key
    core: frozenset[str]
    maybe: frozenset[str]
    ask: tuple[str, ...]  # phrasings asking for the one thing that answers
    ask_all: tuple[str, ...]  # phrasings asking for all of them at once
    context: tuple[tuple[str, str], ...] = ()  # (phrasing, a category the image must hold for it to read well)

    @property
    def categories(self) -> frozenset[str]:
        return self.core | self.maybe


def _names(names: str) -> frozenset[str]:
    return frozenset(n.strip() for n in names.split(",") if n.strip())


def _use(name: str, core: str, maybe: str, ask: tuple[str, ...], ask_all: tuple[str, ...],
         context: tuple[tuple[str, str], ...] = ()) -> Use:
    return Use(name, _names(core), _names(maybe), ask, ask_all, context)


USES: dict[str, Use] = {u.name: u for u in (
    _use("sit on", "chair, couch, bench, toilet", "bed, motorcycle, bicycle, horse",
         ("something to sit on", "a place to sit down", "what could I sit on here?",
          "where could someone take a seat?"),
         ("everything here you could sit on", "all the places to sit", "every seat in the picture")),
    _use("lie down", "bed, couch", "bench",
         ("somewhere to lie down", "where you could take a nap", "what would you sleep on?"),
         ("everything you could lie down on", "all the places to take a nap")),
    _use("keep the rain off", "umbrella", "",
         ("what keeps the rain off", "the thing used to stay dry in the rain", "what would shield someone from rain?"),
         ("everything that keeps the rain off", "all the things that keep people dry")),
    _use("eat", "banana, apple, sandwich, orange, broccoli, carrot, hot dog, pizza, donut, cake", "",
         ("something you could eat", "the food", "something edible", "what could someone have for a snack?"),
         ("all the food here", "everything you could eat", "every edible thing in the picture")),
    _use("cut", "knife, scissors", "",
         ("something to cut with", "a tool for cutting", "what has a blade?"),
         ("everything here that cuts", "all the cutting tools"),
         (("what you would use to cut the cake", "cake"), ("what you would use to cut the pizza", "pizza"),
          ("what would you slice the sandwich with?", "sandwich"))),
    _use("drink from", "cup, wine glass, bottle", "bowl, vase",
         ("something to drink from", "what could hold a drink?", "a container for a beverage"),
         ("everything you could drink from", "all the drink containers")),
    _use("ride", "bicycle, motorcycle, horse", "elephant, skateboard, surfboard, snowboard, skis, cow",
         ("something a person could ride", "what could you ride on?", "a thing to ride"),
         ("everything here a person could ride", "all the things you could ride")),
    _use("tell the time", "clock", "cell phone, laptop, tv",
         ("what tells the time", "something showing the time", "where would you check the hour?"),
         ("everything that shows the time", "all the clocks")),
    _use("keep food cold", "refrigerator", "",
         ("what keeps food cold", "where would you store the milk?", "the appliance that keeps things chilled"),
         ("everything that keeps food cold", "all the fridges")),
    _use("heat food", "microwave, oven, toaster", "",
         ("something used to heat food", "an appliance for cooking", "what would warm up leftovers?"),
         ("every appliance that heats food", "all the cooking appliances")),
    _use("wash hands", "sink", "toilet",
         ("where you would wash your hands", "something with a tap to wash in", "where could you rinse a dish?"),
         ("everywhere you could wash your hands", "all the sinks")),
    _use("watch a show", "tv", "laptop, cell phone",
         ("what you would watch a show on", "the screen for watching television", "what shows the evening news?"),
         ("every screen for watching shows", "everything you could watch a show on")),
    _use("type", "keyboard, laptop", "cell phone",
         ("what you would type on", "something with keys to type with", "what would you use to write an email?"),
         ("everything you could type on", "all the things with a keyboard")),
    _use("phone someone", "cell phone", "",
         ("what you would use to call someone", "the device for making calls", "what would you text a friend with?"),
         ("every phone here", "all the devices for calling someone")),
    _use("read", "book", "cell phone, laptop, tv",
         ("something to read", "what has pages to read?", "something you could learn from by reading"),
         ("everything here you could read", "all the books")),
    _use("throw", "frisbee, sports ball", "",
         ("something to throw", "what could you toss to a friend?", "something a dog could fetch"),
         ("everything here you could throw", "all the things you could toss")),
    _use("fly on a string", "kite", "",
         ("what flies on a string", "the thing flown in the wind", "what would someone fly on a breezy day?"),
         ("everything flown on a string", "all the kites")),
    _use("carry belongings", "backpack, handbag, suitcase", "",
         ("something to carry your things in", "a bag", "what would you pack for a trip?"),
         ("all the bags", "everything you could carry your things in")),
    _use("hit a ball", "baseball bat, tennis racket", "",
         ("what you hit a ball with", "the thing used to strike a ball", "what would a batter swing?"),
         ("everything used to hit a ball", "all the things for hitting balls")),
    _use("catch a ball", "baseball glove", "",
         ("what helps you catch a ball", "the thing worn to catch a baseball", "a catcher's gear on the hand"),
         ("everything for catching balls", "all the baseball gloves")),
    _use("cross water", "boat", "surfboard",
         ("what carries people across water", "something that floats and carries passengers", "what sails?"),
         ("everything that carries people over water", "all the boats")),
    _use("fly", "bird, airplane", "kite, frisbee",
         ("something that can fly", "what is able to fly?", "the thing that flies through the sky"),
         ("everything here that can fly", "all the flying things")),
    _use("carry many passengers", "bus, train", "airplane, boat",
         ("what carries many passengers at once", "a kind of public transport", "what would a commuter take?"),
         ("all the public transport", "everything that carries many passengers")),
    _use("drive", "car, truck, bus", "motorcycle, train",
         ("something you could drive", "what would a driver steer?", "a vehicle with a steering wheel"),
         ("everything here you could drive", "all the vehicles you could drive")),
    _use("carry cargo", "truck", "car, train, boat, airplane, bus",
         ("what carries cargo on the road", "the vehicle for hauling goods"),
         ("everything that hauls cargo", "all the trucks")),
    _use("pet", "dog, cat", "bird, horse, teddy bear",
         ("an animal kept as a pet", "what could be a family pet?", "an animal that lives in people's homes"),
         ("all the pets", "every animal kept as a pet")),
    _use("farm animal", "cow, sheep", "horse, bird, dog",
         ("an animal raised on a farm", "what would a farmer keep in a field?", "a farm animal"),
         ("all the farm animals", "every animal raised on a farm")),
    _use("wild animal", "elephant, bear, zebra, giraffe", "bird",
         ("a wild animal", "an animal you would see on a safari", "what lives in the wild?"),
         ("all the wild animals", "every wild animal here")),
    _use("grow in a pot", "potted plant", "vase, broccoli",
         ("something growing in a pot", "what would need watering?", "a houseplant"),
         ("all the plants in pots", "every houseplant")),
    _use("hold flowers", "vase", "cup, bottle, bowl, potted plant",
         ("what holds flowers", "the container for a bouquet", "where would you put cut flowers?"),
         ("everything that holds flowers", "all the vases")),
    _use("brush teeth", "toothbrush", "",
         ("what you brush your teeth with", "something for cleaning teeth"),
         ("all the toothbrushes", "everything for brushing teeth")),
    _use("dry hair", "hair drier", "",
         ("what dries hair", "the device that blows hot air on wet hair"),
         ("all the hair driers", "everything that dries hair")),
    _use("cuddle", "teddy bear", "cat, dog",
         ("something a child would cuddle", "a soft toy", "what would a kid hug at bedtime?"),
         ("all the soft toys", "everything a child would cuddle")),
    _use("put a plate on", "dining table", "bench, bed, couch, chair",
         ("where you would put your plate", "the surface for eating a meal", "where would the family eat dinner?"),
         ("everywhere you could put your plate", "all the dining tables")),
    _use("direct traffic", "traffic light, stop sign", "",
         ("what tells drivers when to stop", "something that controls traffic", "what signals cars to halt?"),
         ("everything that controls traffic", "all the traffic signals and signs")),
    _use("fight fires", "fire hydrant", "",
         ("what firefighters connect their hoses to", "the source of water for fighting fires"),
         ("all the fire hydrants", "everything firefighters draw water from")),
    _use("pay for parking", "parking meter", "",
         ("where you pay for parking", "the machine that takes money for a parking spot"),
         ("all the parking meters", "everything you pay for parking at")),
    _use("slide on snow", "skis, snowboard", "",
         ("something for sliding down snow", "what would you take to the ski slopes?"),
         ("everything for sliding on snow", "all the winter sports boards and skis")),
    _use("ride waves", "surfboard", "boat",
         ("what you ride waves on", "the board for surfing"),
         ("all the surfboards", "everything for riding waves")),
    _use("roll along", "skateboard", "bicycle",
         ("a board with wheels to roll on", "what would a skater stand on?"),
         ("all the skateboards", "everything a skater rides")),
    _use("eat with", "fork, spoon", "knife, bowl",
         ("something to eat with", "the cutlery for bringing food to your mouth",
          "what would you eat soup or pasta with?"),
         ("all the cutlery for eating", "everything you could eat with")),
    _use("serve food in", "bowl", "cup, vase",
         ("something to serve soup in", "a dish to hold cereal", "what would you pour a salad into?"),
         ("all the bowls", "everything you could serve soup in")),
    _use("move the cursor", "mouse", "laptop, keyboard",
         ("what moves the cursor", "the device you click with at a computer"),
         ("all the computer mice", "everything that moves a cursor")),
    _use("change the channel", "remote", "cell phone",
         ("what changes the channel", "the thing for controlling the TV from the couch"),
         ("all the remotes", "everything for changing the channel")),
    _use("wear with a suit", "tie", "",
         ("what is worn around the neck with a suit", "the piece of formal neckwear"),
         ("all the ties", "every necktie here")),
    _use("flush", "toilet", "sink",
         ("what you flush", "the bathroom fixture you sit on"),
         ("all the toilets", "everything you could flush")),
    _use("human", "person", "teddy bear",
         ("someone who could take a photo", "a human being", "who could answer a question here?"),
         ("all the people", "everyone in the picture")),
)}


def uses_of(category: str) -> list[Use]:
    """The uses a category answers (core), in the table's order."""
    return [u for u in USES.values() if category in u.core]
