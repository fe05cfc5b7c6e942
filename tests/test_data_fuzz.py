"""Property-based fuzzing of the detection readers (hypothesis, derandomized so CI is reproducible).

Property: a reader either returns an index whose every record is valid (boxes inside the image,
positive size, known categories, unique ids, well-formed problems) or raises DataError with a
message naming the dataset; never any other exception. 600 generated cases in all
(220 + 60 COCO, 130 VOC, 150 YOLO, 40 image files); `--hypothesis-show-statistics` shows the mix of outcomes.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from datafixtures import coco_dict, write_image
from visiondoctor.data.formats.coco import read_coco, to_coco_dict
from visiondoctor.data.formats.voc import read_voc
from visiondoctor.data.formats.yolo import read_yolo
from visiondoctor.data.images import image_size, load_rgb
from visiondoctor.data.samples import DataError, DetectionIndex


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# The images every generated dataset points at: written once per module and reused.
IMAGES = {"img0.png": (32, 24, "RGB"), "img1.png": (40, 30, "L"), "img2.png": (16, 16, "RGBA"), "img3.png": (24, 20, "I;16")}
FILE_NAMES = [*IMAGES, "broken.png", "missing.png", "../img0.png", "/etc/passwd", "", "sub/../img1.png", "a\x00b.png"]


def make_images(folder: Path) -> None:
    for name, (w, h, mode) in IMAGES.items():
        write_image(folder / name, w, h, mode)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_valid_or_data_error(read, root: Path) -> None:
    """The property itself."""
    try:
        index = read()
    except DataError as error:
        message = str(error)
        assert message.strip() and str(root) in message, message
        event("DataError: " + message.splitlines()[0].split(": ", 1)[-1][:40])
        return
    assert_valid_index(index, root)
    event(f"index: {'with refusals' if any(p.action == 'refused' for p in index.problems) else 'no refusals'}")


def assert_valid_index(index: DetectionIndex, root: Path) -> None:
    assert index.records, "an index without images must have been a DataError"
    category_ids = {c.id for c in index.categories}
    assert len(category_ids) == len(index.categories)
    image_ids, annotation_ids = set(), []
    assert all(-(2**63) <= c < 2**63 for c in category_ids)
    for r in index.records:
        assert r.image_id not in image_ids and -(2**63) <= r.image_id < 2**63
        image_ids.add(r.image_id)
        assert isinstance(r.width, int) and isinstance(r.height, int) and r.width > 0 and r.height > 0
        assert Path(r.path).is_relative_to(root)
        n = len(r.boxes)
        assert len(r.category_ids) == len(r.annotation_ids) == len(r.iscrowd) == len(r.areas) == n
        for (x1, y1, x2, y2), cid, crowd, area in zip(r.boxes, r.category_ids, r.iscrowd, r.areas):
            assert all(math.isfinite(v) for v in (x1, y1, x2, y2, area))
            assert 0 <= x1 < x2 <= r.width and 0 <= y1 < y2 <= r.height
            assert cid in category_ids and crowd in (0, 1) and area > 0
        annotation_ids += r.annotation_ids
    assert len(set(annotation_ids)) == len(annotation_ids)
    assert all(-(2**63) <= a < 2**63 for a in annotation_ids)
    for p in index.problems:
        assert p.file and p.record and p.message and p.action in ("repaired", "refused", "info") and p.kind
    json.dumps(to_coco_dict(index), allow_nan=False)  # the writer's output is strict JSON


# --- values the generators draw from ------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
numbers = st.one_of(
    st.integers(-10, 100), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-5, 60),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, 1e308, 1 << 21]),  # beyond float, int64, any image
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, text, st.sampled_from(FILE_NAMES))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(text, kids, max_size=4),
                           max_leaves=8)
bboxes = st.lists(st.one_of(numbers, json_scalars), min_size=0, max_size=6)
plausible_bboxes = st.lists(st.one_of(st.integers(-3, 42), st.floats(-3, 42)), min_size=4, max_size=4)  # near the edges

# --- COCO -------------------------------------------------------------------------------------------------

SECTIONS = {
    "images": ["id", "file_name", "width", "height"],
    "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd"],
    "categories": ["id", "name", "supercategory"],
}
mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(sorted(SECTIONS)), st.integers(0, 6), st.sampled_from(
        sorted({k for keys in SECTIONS.values() for k in keys})), json_values),
    st.tuples(st.just("bbox"), st.integers(0, 6), bboxes),
    st.tuples(st.just("bbox"), st.integers(0, 6), plausible_bboxes),
    st.tuples(st.just("file"), st.integers(0, 6), st.sampled_from(FILE_NAMES)),
    st.tuples(st.just("del"), st.sampled_from(sorted(SECTIONS)), st.integers(0, 6), st.sampled_from(
        sorted({k for keys in SECTIONS.values() for k in keys}))),
    st.tuples(st.just("dup"), st.sampled_from(sorted(SECTIONS)), st.integers(0, 6)),
    st.tuples(st.just("entry"), st.sampled_from(sorted(SECTIONS)), st.integers(0, 6), json_values),
    st.tuples(st.just("top"), st.sampled_from([*SECTIONS, "info"]), json_values),
)


def coco_base() -> dict:
    data = coco_dict([(w, h) for w, h, _ in IMAGES.values()])
    for image, name in zip(data["images"], IMAGES):
        image["file_name"] = name
    return data


def apply(data: dict, m: tuple) -> None:
    op = m[0]
    if op == "top":
        data[m[1]] = m[2]
        return
    if op in ("bbox", "file"):
        section, i, value = ("annotations", m[1], m[2]) if op == "bbox" else ("images", m[1], m[2])
        key = "bbox" if op == "bbox" else "file_name"
        entries = data.get(section)
        if isinstance(entries, list) and entries and isinstance(entries[i % len(entries)], dict):
            entries[i % len(entries)][key] = value
        return
    entries = data.get(m[1])
    if not isinstance(entries, list) or not entries:
        return
    i = m[2] % len(entries)
    if op == "dup":
        entries.append(json.loads(json.dumps(entries[i])))
    elif op == "entry":
        entries[i] = m[3]
    elif isinstance(entries[i], dict):
        if op == "set":
            entries[i][m[3]] = m[4]
        else:
            entries[i].pop(m[3], None)


@pytest.fixture(scope="module")
def coco_root(work) -> Path:
    root = work / "coco"
    make_images(root)
    return root


@fuzz_settings(220)
@given(mutations=st.lists(mutation, min_size=1, max_size=6), check_images=st.booleans())
def test_fuzz_coco_mutations(coco_root, mutations, check_images):
    data = coco_base()
    for m in mutations:
        apply(data, m)
    path = coco_root / "ann.json"
    path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON extensions, as some tools do
    assert_valid_or_data_error(lambda: read_coco(path, check_images=check_images), coco_root)


@fuzz_settings(60)
@given(content=st.one_of(st.binary(max_size=200), text.map(str.encode),
                         json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_coco_raw_bytes(coco_root, content):
    path = coco_root / "raw.json"
    path.write_bytes(content)
    assert_valid_or_data_error(lambda: read_coco(path), coco_root)


# --- VOC ----------------------------------------------------------------------------------------------------

# Escaped and free of control characters: odd values inside well-formed XML (broken XML is drawn separately).
xml_text = st.one_of(numbers.map(str), st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
                     st.sampled_from(FILE_NAMES[:-1]), st.sampled_from(["dog", "cat", " 1", "0"])).map(escape)


@st.composite
def voc_documents(draw) -> str:
    """Mostly well-formed VOC XML with some odd values; now and then broken structure or raw text."""
    # Hypothesis shrinks towards 0, so 0 picks the plausible branch in every roll below.
    if draw(st.integers(0, 9)) == 9:
        return draw(text)

    def value(good, weird=xml_text):
        """Usually a plausible value, one time in five something odd, sometimes the element left out."""
        roll = draw(st.integers(0, 9))
        return draw(good) if roll < 7 else draw(weird) if roll < 9 else None

    def element(tag: str, content) -> str:
        return "" if content is None else f"<{tag}>{content}</{tag}>"

    name = draw(st.sampled_from(sorted(IMAGES)))
    w, h, _ = IMAGES[name]
    parts = [element("filename", value(st.just(name))),
             element("size", element("width", value(st.just(w))) + element("height", value(st.just(h))))]
    for _ in range(draw(st.integers(0, 4))):
        x1, y1 = draw(st.integers(-1, w)), draw(st.integers(-1, h))
        coords = (element("xmin", value(st.just(x1))) + element("ymin", value(st.just(y1)))
                  + element("xmax", value(st.integers(x1, w + 2))) + element("ymax", value(st.integers(y1, h + 2))))
        parts.append(element("object", element("name", value(st.sampled_from(["dog", "cat"])))
                             + element("difficult", value(st.sampled_from([0, 1]))) + element("bndbox", coords)))
    root_tag = "svg" if draw(st.integers(0, 19)) == 19 else "annotation"
    document = f"<{root_tag}>{''.join(parts)}</{root_tag}>"
    if draw(st.integers(0, 19)) == 19:  # truncated: broken XML
        document = document[: draw(st.integers(0, len(document)))]
    return document


@pytest.fixture(scope="module")
def voc_root(work) -> Path:
    root = work / "voc"
    make_images(root / "JPEGImages")
    return root


@fuzz_settings(130)
@given(documents=st.lists(voc_documents(), min_size=1, max_size=3),
       split_lines=st.one_of(st.none(), st.lists(st.sampled_from(["x0", "x0", "x1", "x2", "nope", "../../x", "x0 1"]),
                                                  min_size=1, max_size=4)))
def test_fuzz_voc(voc_root, documents, split_lines):
    shutil.rmtree(voc_root / "Annotations", ignore_errors=True)
    shutil.rmtree(voc_root / "ImageSets", ignore_errors=True)
    (voc_root / "Annotations").mkdir()
    for i, document in enumerate(documents):
        (voc_root / "Annotations" / f"x{i}.xml").write_text(document, encoding="utf-8")
    split = None
    if split_lines is not None:
        (voc_root / "ImageSets" / "Main").mkdir(parents=True)
        (voc_root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(split_lines))
        split = "train"
    assert_valid_or_data_error(lambda: read_voc(voc_root, split), voc_root)


# --- YOLO ---------------------------------------------------------------------------------------------------

yolo_token = st.one_of(st.integers(-2, 4).map(str), st.floats(-0.5, 1.5).map(repr), numbers.map(str),
                       st.sampled_from(["nan", "inf", "1e999", "0x10", "", "1_0", "9" * 400, "²", "１"]), text.filter(lambda t: "\n" not in t))
yolo_line = st.one_of(st.lists(yolo_token, min_size=0, max_size=9).map(" ".join),
                      st.tuples(st.integers(0, 3), *[st.floats(0, 1)] * 4).map(lambda t: " ".join(map(str, t))), text)
label_files = st.dictionaries(st.sampled_from([n.replace(".png", "") for n in IMAGES] + ["broken", "orphan"]),
                              st.one_of(st.lists(yolo_line, max_size=5).map("\n".join), st.binary(max_size=40)),
                              max_size=5)
names_files = st.one_of(
    st.none(),
    st.tuples(st.just("data.yaml"), st.one_of(
        st.lists(text, max_size=4).map(lambda names: json.dumps({"names": names})),
        st.dictionaries(st.one_of(st.integers(-1, 4), text), text, max_size=4).map(
            lambda d: "names:\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v)}\n" for k, v in d.items())),
        text)),
    st.tuples(st.just("classes.txt"), st.lists(text.filter(lambda t: "\n" not in t), max_size=4).map("\n".join)),
)


@pytest.fixture(scope="module")
def yolo_root(work) -> Path:
    root = work / "yolo"
    make_images(root / "images" / "train")
    return root


@fuzz_settings(150)
@given(labels=label_files, names=names_files)
def test_fuzz_yolo(yolo_root, labels, names):
    shutil.rmtree(yolo_root / "labels", ignore_errors=True)
    for f in ("data.yaml", "classes.txt"):
        (yolo_root / f).unlink(missing_ok=True)
    (yolo_root / "labels" / "train").mkdir(parents=True)
    for stem, content in labels.items():
        target = yolo_root / "labels" / "train" / f"{stem}.txt"
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content, encoding="utf-8")
    if names is not None:
        (yolo_root / names[0]).write_text(names[1], encoding="utf-8")
    assert_valid_or_data_error(lambda: read_yolo(yolo_root, "train"), yolo_root)


# --- image files ------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about corrupt EXIF before refusing
@fuzz_settings(40)
@given(header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00"]),
       body=st.binary(max_size=120))
def test_fuzz_image_bytes(work, header, body):
    path = work / "random.img"
    path.write_bytes(header + body)
    for read in (image_size, load_rgb):
        try:
            read(path)
        except DataError as error:
            assert str(path) in str(error)
