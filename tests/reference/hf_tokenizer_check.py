#!/usr/bin/env python3
"""Hugging Face `tokenizers` compatibility check for moe.c's byte-level BPE.

(a) tokenizer.json files trained by us (`tokenizer train`, patterns gpt2/gpt4/qwen/deepseek) are
    loaded by HF, which must give the same ids as `tokenizer encode` on texts of several domains.
(b) HF trains byte-level BPE tokenizers in GPT-2 style (ByteLevel pre-tokenizer, also with
    add_prefix_space), DeepSeek LLM style (Sequence of Split regexes + Digits + ByteLevel),
    Qwen2 style (one Split regex + ByteLevel), and Split with every behaviour; saves each
    tokenizer.json; ours loads it and must give the same ids. Also the legacy "a b" merges
    format, and a Qwen file with an NFC normalizer must be refused with a clear message.

Prints PASS/FAIL lines. Usage: hf_tokenizer_check.py --bpe build/tokenizer --work DIR
"""
import argparse
import glob
import gzip
import json
import os
import subprocess
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

GPT4 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
        r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
        r"\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM / DeepSeek-MoE pre-tokenizer (deepseek-llm-7b-base tokenizer.json)
DS_LETTERS = (
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC"
    "\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134"
    "\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE"
    "\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF"
    "\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
    "\U0001E900-\U0001E943]+")
DS_SPLITS = ["[\r\n]", DS_LETTERS, "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
             "\\s+$", "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+"]

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]


def domain_texts():
    """A few KB per domain: English prose, code, unicode, numbers, whitespace runs."""
    texts = {}
    eng = ""
    gc = "/usr/share/dictd/gcide.dict.dz"
    if os.path.exists(gc):
        with gzip.open(gc, "rt", encoding="utf-8", errors="replace") as f:
            f.read(200000)
            eng = f.read(15000)
    eng += ("In the beginning God created the heaven and the earth. And the earth was without form, "
            "and void; and darkness was upon the face of the deep. Don't you think it's 'quoted'? I'll go. ")
    texts["english"] = eng
    code = ""
    for h in sorted(glob.glob("/usr/include/*.h"))[:20]:
        with open(h, encoding="utf-8", errors="replace") as f:
            code += f.read(2000)
    code += "int main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++) printf(\"%s\\n\", argv[i]);\n}\n"
    texts["code"] = code
    texts["unicode"] = ("Café naïve résumé Ångström. Москва — столица России. 中文测试，你好！日本語のテキスト。"
                        "한국어 텍스트. Ελληνικά κείμενα. عربي. emoji 😀🎉👍🏽 ＦＵＬＬ ｗｉｄｔｈ “quotes” ‘single’ …\n"
                        "µ Ω K ℃ ① ² ½ ℕ 𝔘 \u00a0nbsp\u2003em-space\u3000ideographic\n")
    texts["numbers"] = ("1 12 123 1234 12345 123456 3.14159 2,718,281 0x1F 1e-10 -42 +7 1st 2nd 3rd 10% $99.99 "
                        "٣٤٥ ١٢ 2024-11-24T01:02:03Z 192.168.0.1 ⅫⅣ\n" * 5)
    texts["whitespace"] = ("a  b   c    d\t\te\n\n\nf \n g\r\n  h   \n\n  \t  \n    indented\n        more\n"
                           "trailing   \nx" + " " * 50 + "y\n" + "\n" * 10 + "end   ")
    # unicode whitespace of every kind, and a deterministic random mix of character classes
    ws = "\u0085\u00a0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\u180e\u200b\ufeff\x0b\x0c\x1c\x1f"
    texts["unicode_whitespace"] = "".join(f"a{c}b x {c} y{c}{c}z {c}\n{c}5 " for c in ws)
    # letters/digits newer than PCRE2 10.42's Unicode tables (see RX_EXTRA_L in tokenizer.c)
    recent = [0x1C89, 0xA7CB, 0x105C0, 0x10D4A, 0x10D40, 0x116D0, 0x13460, 0x1E5F1, 0x2EBF0, 0x31350, 0x1E4D0]
    texts["unicode_recent"] = " ".join(f"x{chr(c)}{chr(c + 1)}y {chr(c)}12 '{chr(c)}" for c in recent) + "\u180e a\n"
    import random
    rnd = random.Random(1234)
    pool = (list("aZé'sS tT\n\r\t  09.,;!?-_()[]{}<>\"'/\\|`~@#$%^&*+=") + ["'s", "'T", "'re", "'LL", "\r\n", "  ", "\u00a0"]
            + ["中", "文", "é", "ß", "Ω", "й", "ع", "😀", "👍🏽", "①", "²", "٣", "\u0301", "\u200d", "ｶ", "ー", "가"])
    texts["random_mix"] = "".join(rnd.choice(pool) for _ in range(6000))
    cps = [c for c in (rnd.randrange(0x20, 0x32400) for _ in range(5000)) if not 0xD800 <= c < 0xE000]
    texts["random_codepoints"] = "".join(chr(c) + rnd.choice(["", "", " ", "'s ", "1", "\n", "  "]) for c in cps)
    texts["specials"] = "<|begin_of_text|>Hello world<|end_of_text|><|pad|> text after <|pad|>"
    # the built-in corpus, when `make data` has built it
    for p in sorted(glob.glob("data/cache/**/*.txt", recursive=True))[:6]:
        try:
            with open(p, encoding="utf-8") as f:
                texts["corpus:" + os.path.basename(p)] = f.read(20000)
        except (UnicodeDecodeError, OSError):
            pass
    return texts


class Checker:
    def __init__(self, bpe, work):
        self.bpe, self.work = bpe, work
        self.failed = 0

    def report(self, name, ok, why=""):
        if ok:
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {why}")
        sys.stdout.flush()

    def ours(self, tok_json, texts, special=True):
        """ids of every text, one `tokenizer encode` run for all of them"""
        paths = []
        for i, text in enumerate(texts):
            paths.append(os.path.join(self.work, f"text{i}.txt"))
            with open(paths[-1], "wb") as f:
                f.write(text.encode("utf-8"))
        r = subprocess.run([self.bpe, "encode"] + (["-S"] if special else []) + ["-t", tok_json] + paths,
                           capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.decode(errors="replace").strip())
        lines = r.stdout.decode().split("\n")
        return [[int(x) for x in lines[i].split()] for i in range(len(texts))]

    def compare(self, name, tok_json, texts, special=True):
        """special=False: ours without -S against HF with encode_special_tokens=True."""
        try:
            hf = Tokenizer.from_file(tok_json)
            hf.encode_special_tokens = not special
        except Exception as e:  # noqa: BLE001
            self.report(name, False, f"HF cannot load {tok_json}: {e}")
            return
        bad = []
        try:
            ours = self.ours(tok_json, list(texts.values()), special)
        except RuntimeError as e:
            self.report(name, False, f"ours failed: {e}")
            return
        for (dom, text), got in zip(texts.items(), ours):
            want = hf.encode(text, add_special_tokens=False).ids
            if got != want:
                i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
                ctx = hf.decode(want[max(0, i - 3):i + 3])
                bad.append(f"{dom}: {len(got)} vs HF {len(want)} ids, first difference at {i} near {ctx!r}: "
                           f"ours {got[i:i + 4]} HF {want[i:i + 4]}")
        self.report(name, not bad, "; ".join(bad)[:1500])


def hf_train(pre_tok, texts, vocab=1200, specials=SPECIALS):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=tr)
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    c = Checker(args.bpe, args.work)
    texts = domain_texts()
    train_texts = list(texts.values())
    train_file = os.path.join(args.work, "train.txt")
    with open(train_file, "wb") as f:
        f.write("\n".join(train_texts).encode("utf-8"))

    # (a) ours -> HF
    for pat in ["gpt2", "gpt4", "qwen", "deepseek"]:
        out = os.path.join(args.work, f"ours_{pat}.json")
        r = subprocess.run([args.bpe, "train", "-q", "-o", out, "-v", "1500", "-p", pat, train_file],
                           capture_output=True)
        if r.returncode != 0:
            c.report(f"hf_compat_ours_{pat}_loads_in_hf", False, r.stderr.decode(errors="replace"))
            continue
        c.compare(f"hf_compat_ours_{pat}_loads_in_hf", out, texts)

    # (b) HF -> ours
    styles = {
        "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "gpt2_prefix_space": pre_tokenizers.ByteLevel(add_prefix_space=True),
        "deepseek": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in DS_SPLITS]
            + [pre_tokenizers.Digits(individual_digits=True),
               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "qwen": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN), behavior="isolated", invert=False),
                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "llama3_gpt4": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GPT4), behavior="isolated", invert=False),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "digits_contiguous": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    }
    for beh in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]:
        for inv in [False, True]:
            styles[f"split_{beh}{'_invert' if inv else ''}"] = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(r"\s+|[.,;]"), behavior=beh, invert=inv),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # ^ and $ are line anchors in Oniguruma (Ruby syntax)
    styles["split_line_anchors"] = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[ \t]+$|^[ \t]+|\s+$"), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    styles["split_string"] = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="merged_with_next", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for name, pt in styles.items():
        tok = hf_train(pt, train_texts, vocab=800 if name.startswith("split") else 1500)
        path = os.path.join(args.work, f"hf_{name}.json")
        tok.save(path)
        c.compare(f"hf_compat_hf_{name}_loads_in_ours", path, texts)

    # added tokens with lstrip / rstrip / single_word, special and not
    tok = Tokenizer.from_file(os.path.join(args.work, "hf_qwen.json"))
    tok.add_tokens([AddedToken("<lx>", lstrip=True), AddedToken("<rx>", rstrip=True), AddedToken("qq", single_word=True),
                    AddedToken("<both>", lstrip=True, rstrip=True), AddedToken("<x>"), AddedToken("<x>y")])
    tok.add_special_tokens([AddedToken("<|s|>")])
    added = os.path.join(args.work, "hf_added_tokens.json")
    tok.save(added)
    added_texts = dict(texts)
    added_texts["added"] = ("a <lx> b <rx>  c qq sqqs qq_x (qq) qq. éqq qqé qq1 1qq ?qq? 中qq qq\u0301 qq-qq\n"
                            "  <lx>\t<rx>\n x<both> y \n<both>\nz x\u00a0<lx>\u00a0y\u3000<rx>\u3000z "
                            "<x>y <x> <|s|><|s|>\u2003\u2003<both>\u0085\u0085x")
    c.compare("hf_compat_added_tokens_strip_single_word", added, added_texts)
    c.compare("hf_compat_added_tokens_special_as_text", added, {"added": added_texts["added"],
                                                                "specials": texts["specials"]}, special=False)

    # legacy merges format "a b" and ignore_merges
    with open(os.path.join(args.work, "hf_qwen.json"), encoding="utf-8") as f:
        js = json.load(f)
    js["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in js["model"]["merges"]]
    legacy = os.path.join(args.work, "hf_qwen_legacy_merges.json")
    with open(legacy, "w", encoding="utf-8") as f:
        json.dump(js, f, ensure_ascii=False)
    c.compare("hf_compat_legacy_string_merges", legacy, texts)
    js["model"]["ignore_merges"] = True
    im = os.path.join(args.work, "hf_qwen_ignore_merges.json")
    with open(im, "w", encoding="utf-8") as f:
        json.dump(js, f, ensure_ascii=False)
    c.compare("hf_compat_ignore_merges", im, texts)

    # a normalizer we do not implement is refused, naming it and the file
    js["normalizer"] = {"type": "NFC"}
    nfc = os.path.join(args.work, "hf_qwen_nfc.json")
    with open(nfc, "w", encoding="utf-8") as f:
        json.dump(js, f, ensure_ascii=False)
    r = subprocess.run([args.bpe, "encode", "-t", nfc, train_file], capture_output=True)
    msg = r.stderr.decode(errors="replace")
    c.report("hf_compat_nfc_refused", r.returncode != 0 and "NFC" in msg and nfc in msg, msg.strip())
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
