//! Online conversion: reads and writes through the data segment while a conversion runs in
//! another thread see consistent data, and what was written survives the conversion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_volume::*;
use common::*;

fn exercise(u: &UnlockedVolume, model: &mut [u8], rng: &mut Rng, running: &AtomicBool) -> u64 {
    let mut ops = 0;
    let len = model.len() as u64;
    while running.load(Ordering::Acquire) || ops < 200 {
        let off = rng.below(len - 10_000);
        let n = 1 + rng.below(9000) as usize;
        if rng.below(2) == 0 {
            let data = payload(n, rng.next());
            u.write_at(&data, off).unwrap();
            model[off as usize..off as usize + n].copy_from_slice(&data);
        } else {
            let mut got = vec![0u8; n];
            u.read_at(&mut got, off).unwrap();
            assert_eq!(
                got,
                &model[off as usize..off as usize + n],
                "read at {off} during conversion"
            );
        }
        ops += 1;
    }
    ops
}

#[test]
fn io_during_encrypt_rekey_decrypt_is_consistent() {
    let dir = temp_dir("online");
    let img = dir.join("vol.img");
    let dev = Arc::new(FileDevice::create(&img, (1 << 20) + (4 << 20)).unwrap());
    let u = Volume::format(dev, &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let mut model = payload(u.len() as usize, 5);
    u.write_at(&model, 0).unwrap();
    let mut rng = Rng(12345);
    for step in 0..3 {
        match step {
            0 => u
                .begin_encrypt(
                    KeyMaterial::generate(KeySize::Bits256).unwrap(),
                    reference("a"),
                    &fast(),
                )
                .unwrap(),
            1 => u
                .begin_rekey(
                    KeyMaterial::generate(KeySize::Bits512).unwrap(),
                    reference("b"),
                    &fast(),
                )
                .unwrap(),
            _ => u.begin_decrypt().unwrap(),
        }
        let running = Arc::new(AtomicBool::new(true));
        let conv = {
            let u = u.clone();
            let running = running.clone();
            std::thread::spawn(move || {
                let r = u.convert(&chunked(64 << 10), &mut |_| std::thread::yield_now());
                running.store(false, Ordering::Release);
                r
            })
        };
        // A second thread reads the last 512 KiB, which only the converter touches.
        let tail_off = u.len() - (512 << 10);
        let tail = model[tail_off as usize..].to_vec();
        let reader = {
            let u = u.clone();
            let running = running.clone();
            std::thread::spawn(move || {
                let mut r = Rng(77);
                let mut reads = 0u64;
                while running.load(Ordering::Acquire) || reads < 50 {
                    let off = r.below(tail.len() as u64 - 20_000);
                    let n = 1 + r.below(20_000) as usize;
                    let mut got = vec![0u8; n];
                    u.read_at(&mut got, tail_off + off).unwrap();
                    assert_eq!(
                        got,
                        &tail[off as usize..off as usize + n],
                        "tail read at {off}"
                    );
                    reads += 1;
                }
                reads
            })
        };
        let ops = exercise(&u, &mut model[..tail_off as usize], &mut rng, &running);
        conv.join().unwrap().unwrap();
        reader.join().unwrap();
        assert_eq!(read_all(&u), model, "after step {step}");
        eprintln!("step {step}: {ops} concurrent operations");
    }
    assert_eq!(u.state(), State::Plain);
    drop(u);
    let raw = std::fs::read(&img).unwrap();
    assert_eq!(&raw[1 << 20..], &model[..]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stop_and_resume_keeps_progress() {
    let dev = Arc::new(MemDevice::new((1 << 20) + (1 << 20)));
    let u = Volume::format(dev.clone(), &small_format())
        .unwrap()
        .unlock(vec![])
        .unwrap();
    let data = payload(1 << 20, 8);
    u.write_at(&data, 0).unwrap();
    let k = KeyMaterial::generate(KeySize::Bits256).unwrap();
    let kb = k.expose().to_vec();
    u.begin_encrypt(k, reference("s"), &fast()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = chunked(64 << 10);
    opts.stop = Some(stop.clone());
    let mut seen = Vec::new();
    let state = u
        .convert(&opts, &mut |p| {
            seen.push(*p);
            if p.done >= 256 << 10 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    assert_eq!(state, State::Encrypting);
    let last = seen.last().unwrap();
    assert_eq!(last.total, 1 << 20);
    assert!(last.done < last.total && last.done >= 256 << 10);
    drop(u);
    let v = Volume::open(dev.clone()).unwrap();
    let info = v.info();
    assert_eq!(info.state, State::Encrypting);
    assert_eq!(info.progress.as_ref().unwrap().done, last.done);
    assert_eq!(info.keys[0].role, "new");
    assert!(v.unlock(vec![]).is_err(), "resuming needs the key");
    let v = Volume::open(dev).unwrap();
    let u = unlock_with(v, &[&kb]);
    let mut first_done = None;
    u.convert(&chunked(64 << 10), &mut |p| {
        first_done.get_or_insert(p.done);
    })
    .unwrap();
    assert!(
        first_done.unwrap() > last.done,
        "resumed where it stopped, not from 0"
    );
    assert_eq!(read_all(&u), data);
}

#[test]
fn the_converted_bytes_do_not_depend_on_the_thread_count() {
    // 3 MiB chunks over 10 MiB: three whole chunks of three 1 MiB granules each and a short
    // last one, converted by 1, 2, 3 and 6 workers (the thread that checksums the next chunk
    // joins the converting ones when done).
    let dir = temp_dir("threads");
    let data = payload(10 << 20, 9);
    let key = payload(64, 3);
    let mut first: Option<Vec<u8>> = None;
    for threads in [1, 2, 3, 6] {
        let img = dir.join(format!("vol{threads}.img"));
        let dev = Arc::new(FileDevice::create(&img, (1 << 20) + (10 << 20)).unwrap());
        let u = Volume::format(dev, &small_format())
            .unwrap()
            .unlock(vec![])
            .unwrap();
        u.write_at(&data, 0).unwrap();
        let opts = ConvertOptions {
            chunk_size: 3 << 20,
            threads,
            stop: None,
        };
        u.begin_encrypt(key_of(&key), reference("t"), &fast())
            .unwrap();
        assert_eq!(u.convert(&opts, &mut |_| {}).unwrap(), State::Encrypted);
        drop(u);
        let raw = std::fs::read(&img).unwrap()[1 << 20..].to_vec();
        assert_ne!(raw, data, "{threads} threads: the data is encrypted");
        match &first {
            None => first = Some(raw),
            Some(f) => assert!(*f == raw, "{threads} threads gave other ciphertext"),
        }
        let dev = Arc::new(FileDevice::open(&img).unwrap());
        let u = unlock_with(Volume::open(dev).unwrap(), &[&key]);
        u.begin_decrypt().unwrap();
        assert_eq!(u.convert(&opts, &mut |_| {}).unwrap(), State::Plain);
        assert!(read_all(&u) == data, "{threads} threads: decrypted back");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
