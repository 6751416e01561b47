//! GPT-2 BPE from the Rust tools, offline: fixed sentences against ids that the Python GPT-2
//! tokenizer produced once (transformers.GPT2TokenizerFast(vocab=encoder.json, merges=vocab.bpe), via `models/tokenizer_reference.py`;
//! also stored in `models/tokenizer_reference.json`).

use lookat_calibrate::tokenizer;

const CASES: &[(&str, &str, &[u32])] = &[
    (
        "ascii",
        "Hello world! lookat compresses the GPT-2 key cache with product quantization.",
        &[
            15496, 995, 0, 804, 265, 552, 16746, 262, 402, 11571, 12, 17, 1994, 12940, 351, 1720,
            5554, 1634, 13,
        ],
    ),
    (
        "unicode",
        "Café naïve — Zürich, 東京, Ελληνικά, emoji 🚀🙂 and a non-breaking space.",
        &[
            34, 1878, 2634, 41492, 851, 1168, 9116, 7527, 11, 10545, 251, 109, 12859, 105, 11,
            7377, 243, 39377, 39377, 138, 115, 26180, 29945, 43000, 138, 105, 11, 44805, 12520,
            248, 222, 8582, 25081, 290, 257, 1729, 12, 13395, 1849, 13200, 13,
        ],
    ),
    (
        "code",
        "def square(x: int) -> int:\n    \"\"\"Return x squared.\"\"\"\n    return x ** 2  # ok\n",
        &[
            4299, 6616, 7, 87, 25, 493, 8, 4613, 493, 25, 198, 220, 220, 220, 37227, 13615, 2124,
            44345, 526, 15931, 198, 220, 220, 220, 1441, 2124, 12429, 362, 220, 1303, 12876, 198,
        ],
    ),
    (
        "whitespace",
        "  leading,\ttab,\t\ttwo tabs,   three spaces\n\n\nthree newlines   \n trailing  ",
        &[
            220, 3756, 11, 197, 8658, 11, 197, 197, 11545, 22524, 11, 220, 220, 1115, 9029, 628,
            198, 15542, 649, 6615, 220, 220, 220, 198, 25462, 220, 220,
        ],
    ),
    (
        "contractions",
        "It's John's, we're sure; they'll say I'd've known. DON'T 'S 's 't 're 've 'm 'll 'd",
        &[
            1026, 338, 1757, 338, 11, 356, 821, 1654, 26, 484, 1183, 910, 314, 1549, 1053, 1900,
            13, 23917, 6, 51, 705, 50, 705, 82, 705, 83, 705, 260, 705, 303, 705, 76, 705, 297,
            705, 67,
        ],
    ),
    (
        "digits",
        "In 2026, 1234567 tokens cost $3.14159 (x100) or 0.000042 each; 10,000 vs 10000.",
        &[
            818, 1160, 2075, 11, 17031, 2231, 3134, 16326, 1575, 720, 18, 13, 1415, 19707, 357, 87,
            3064, 8, 393, 657, 13, 2388, 3682, 1123, 26, 838, 11, 830, 3691, 33028, 13,
        ],
    ),
];

#[test]
fn encodes_and_decodes_like_the_python_tokenizer() {
    let bpe = tokenizer::Tokenizer::gpt2().expect("r50k_base is embedded in tiktoken-rs");
    for (name, text, ids) in CASES {
        assert_eq!(bpe.encode(text).unwrap(), ids.to_vec(), "{name}");
        assert_eq!(bpe.decode(ids), *text, "{name}");
    }
    assert_eq!(bpe.decode(&[tokenizer::END_OF_TEXT]), "<|endoftext|>");
    assert_eq!(bpe.separator(), Some(tokenizer::END_OF_TEXT));
}

#[test]
fn token_id_files_are_read_and_bad_entries_named() {
    let dir = std::env::temp_dir().join(format!("lookat-token-ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("ids.txt");
    std::fs::write(&good, "1 2, 3\n40000\t5\n").unwrap();
    assert_eq!(
        tokenizer::read_token_ids(&good).unwrap(),
        vec![1, 2, 3, 40000, 5]
    );
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "1 2 x3").unwrap();
    let err = format!("{:#}", tokenizer::read_token_ids(&bad).unwrap_err());
    assert!(err.contains("entry 2 ('x3')"), "{err}");
    std::fs::write(&bad, " \n").unwrap();
    assert!(format!("{:#}", tokenizer::read_token_ids(&bad).unwrap_err()).contains("no token ids"));
    std::fs::remove_dir_all(&dir).unwrap();
}
