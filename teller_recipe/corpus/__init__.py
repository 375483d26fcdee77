"""Training data: synthetic speech with known phone timing → face motion, and real videos → the same columns.

    text.py            sentences (WordNet 3.0 usage examples, Debian `wordnet-base`)
    speech/            four speech engines (Piper, espeak-ng, flite, festival) → 16 kHz audio + ARPAbet phones
    phonemes.py        the common phone set and the engines' alphabets → it
    visemes.py         phones → articulatory tracks with coarticulation (dominance functions)
    face_model.py      articulatory tracks → the 21 keypoints; random face shapes and resting expressions
    prosody.py         loudness → stress → head nods, drift and brow raises
    motion_synth.py    all of the above → 25 fps motion features, identity prior, mouth opening, silence
    augment.py         rooms, noise, phone lines, resampling, level
    corpus.py          the dataset schema, splits (held-out voices) and one example
    build_corpus.py    CLI: `python -m teller_recipe.corpus.build_corpus --output data/corpus --hours 3`
    video_to_motion.py real talking-head videos → the same columns
    plot.py            CLI: draw an utterance (waveform, phones, mouth, head) into a PNG
"""
