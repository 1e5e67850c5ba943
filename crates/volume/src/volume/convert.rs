//! In-place conversion (encrypt, rekey, decrypt): starting one, recovering its hotzone after
//! a crash, and converting chunk by chunk (docs/volume-format.md, "Conversion record").

use super::*;

/// SHA-256 of one conversion unit (record version 1). The one-shot `openssl::sha::sha256`
/// fetches the digest from the provider on every call under OpenSSL 3 (a lock and string
/// compares per 512-byte unit); the low-level context does not.
pub(super) fn sha256_unit(unit: &[u8]) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(unit);
    h.finish()
}

/// Writes the checksum of each 512-byte unit of `data` into `table` (one entry per unit).
/// Version 2: xxh3-128, its canonical form (the 128-bit value big-endian); version 1: SHA-256.
pub(super) fn unit_checksums(version: RecordVersion, data: &[u8], table: &mut [u8]) {
    let e = version.entry_bytes() as usize;
    for (unit, entry) in data
        .chunks_exact(HOTZONE_UNIT as usize)
        .zip(table.chunks_exact_mut(e))
    {
        match version {
            RecordVersion::V1 => entry.copy_from_slice(&sha256_unit(unit)),
            RecordVersion::V2 => entry.copy_from_slice(&xxh3_128(unit).to_be_bytes()),
        }
    }
}

/// Whether `unit` still holds the old contents its table entry describes.
pub(super) fn unit_matches(version: RecordVersion, unit: &[u8], entry: &[u8]) -> bool {
    match version {
        RecordVersion::V1 => sha256_unit(unit)[..] == *entry,
        RecordVersion::V2 => xxh3_128(unit).to_be_bytes()[..] == *entry,
    }
}

/// Bit `i` of a hotzone's skip mask: the i-th [`SKIP_GRANULE`] of the chunk at `b` of `len`
/// bytes holds no content according to `used` (asked while the chunk's lock is held).
pub(super) fn skip_mask(used: Option<&dyn UsedRanges>, b: u64, len: u64) -> u64 {
    let Some(used) = used else { return 0 };
    let mut mask = 0u64;
    for i in 0..len.div_ceil(SKIP_GRANULE).min(64) {
        let off = b + i * SKIP_GRANULE;
        let n = SKIP_GRANULE.min(b + len - off);
        if !used.in_use(off, n) {
            mask |= 1 << i;
        }
    }
    mask
}

/// Where a conversion that started this run at `first` stands at `done` of `total`, with this
/// run's rate and the time left at that rate.
pub(super) fn progress_at(
    kind: ConversionKind,
    first: u64,
    done: u64,
    total: u64,
    started: Instant,
) -> Progress {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 {
        (done - first) as f64 / secs
    } else {
        0.0
    };
    Progress {
        kind,
        done,
        total,
        bytes_per_sec: rate,
        eta: (rate > 0.0).then(|| Duration::from_secs_f64((total - done) as f64 / rate)),
    }
}

/// Most bytes a used-space-only conversion passes over in one commit when they hold no content:
/// a volume of hundreds of GiB, mostly empty, takes a commit per 4 GiB, not per chunk.
pub(super) const MAX_SKIP_RUN: u64 = 4 << 30;

/// Bytes a conversion worker reads, checksums or converts at a time: small enough that the
/// read, the checksum or cipher and the write all stay in the CPU cache (a chunk-sized buffer
/// would go through memory several times).
pub(super) const PIECE: usize = 256 << 10;

/// Runs `f(g, table_part, piece)` for each granule `g` of a chunk of `len` bytes that `skip`
/// does not exclude, spread over `threads` threads (the calling one included), each taking a
/// contiguous run of granules and its own `PIECE`-byte buffer. `table_part` is the granule's
/// part of `table` (the chunk's checksum table).
pub(super) fn per_granule<F>(
    threads: usize,
    len: u64,
    skip: u64,
    table: &mut [u8],
    entry: u64,
    f: F,
) -> Result<()>
where
    F: Fn(u64, &mut [u8], &mut [u8]) -> Result<()> + Sync,
{
    let t_per = (SKIP_GRANULE / HOTZONE_UNIT * entry) as usize;
    let mut parts: Vec<(u64, &mut [u8])> = table
        .chunks_mut(t_per)
        .enumerate()
        .map(|(g, t)| (g as u64, t))
        .filter(|(g, _)| !is_skipped(skip, *g))
        .collect();
    let threads = threads.clamp(1, parts.len().max(1));
    let per = parts.len().div_ceil(threads).max(1);
    let run = |group: &mut [(u64, &mut [u8])]| -> Result<()> {
        let mut piece = vec![0u8; PIECE.min(len as usize)];
        for (g, t) in group.iter_mut() {
            f(*g, t, &mut piece)?;
        }
        Ok(())
    };
    if threads == 1 {
        return run(&mut parts);
    }
    std::thread::scope(|s| {
        let mut groups = parts.chunks_mut(per);
        let mine = groups.next();
        let handles: Vec<_> = groups.map(|g| s.spawn(|| run(g))).collect();
        let mut result = mine.map_or(Ok(()), run);
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("a conversion worker panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// The granules of a chunk that its skip mask does not exclude, handed out one at a time to
/// whichever worker asks next: the workers that convert a chunk share it evenly, and the one
/// that first prepared the next chunk joins them when it is done.
pub(super) struct Granules {
    list: Vec<u64>,
    next: std::sync::atomic::AtomicUsize,
}

impl Granules {
    pub(super) fn of(len: u64, skip: u64) -> Granules {
        Granules {
            list: (0..len.div_ceil(SKIP_GRANULE))
                .filter(|g| !is_skipped(skip, *g))
                .collect(),
            next: Default::default(),
        }
    }

    /// The next granule nobody has taken yet.
    pub(super) fn take(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.list.get(i).copied()
    }

    /// Hands out nothing more (a worker failed: the others stop after their granule).
    pub(super) fn close(&self) {
        self.next.store(usize::MAX / 2, Ordering::Relaxed);
    }
}

/// A chunk whose checksums are computed, still locked, not yet committed or written.
pub(super) struct Prepared<'a> {
    b: u64,
    len: u64,
    guard: crate::rangelock::RangeGuard<'a>,
    skip: u64,
    table: Vec<u8>,
}

/// Whether granule `g` is marked in a skip mask.
pub(super) fn is_skipped(skip: u64, g: u64) -> bool {
    g < 64 && skip & (1 << g) != 0
}

impl UnlockedVolume {
    /// Starts encrypting a plain volume with `key`, whose KMIP reference goes into the header.
    /// Returns at once; [`UnlockedVolume::convert`] does the work (and resumes it after a
    /// crash).
    pub fn begin_encrypt(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
    ) -> Result<()> {
        if opts.sector_size != 512 && opts.sector_size != 4096 {
            return Err(Error::Usage("the sector size must be 4096 or 512".into()));
        }
        let _busy = self.inner.converting.lock();
        let _all = self.inner.locks.acquire(0, u64::MAX, true);
        if self.state() != State::Plain {
            return Err(Error::State(format!(
                "the volume is {}, not plain: encryption applies to plain volumes only",
                self.state().as_str()
            )));
        }
        if !self
            .inner
            .data_size
            .load(Ordering::Acquire)
            .is_multiple_of(opts.sector_size as u64)
        {
            return Err(Error::State(
                "the data size is not a multiple of the sector size".into(),
            ));
        }
        check_reference(&reference)?;
        let digest = make_digest(&key, opts.pbkdf2_iterations, vec![0])?;
        let cipher = Arc::new(XtsCipher::new(key.secret())?);
        let did = self.meta().free_digest_id();
        self.add_derived_keys(did, &key)?;
        let token = token_of(&reference, key.size());
        self.commit(|m| {
            m.add_new_key(digest, token, ConversionKind::Encrypt, None);
            m.segment.kind = SegmentKind::Crypt {
                encryption: CIPHER.into(),
                sector_size: opts.sector_size,
                iv_tweak: 0,
            };
        })?;
        let mut layout = self.inner.layout.write();
        layout.new = Form::Xts(cipher);
        layout.old = Form::Plain;
        layout.sector = opts.sector_size as u64;
        layout.iv_tweak = 0;
        self.inner.boundary.store(0, Ordering::Release);
        Ok(())
    }

    /// Starts re-encrypting an encrypted volume with a new key. A recovery key the volume has
    /// is removed in the same header commit (it opens the old key only); see
    /// [`UnlockedVolume::begin_rekey_renewing_recovery`] to replace it instead.
    pub fn begin_rekey(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
    ) -> Result<()> {
        self.begin_rekey_with(key, reference, opts, None).map(drop)
    }

    /// Like [`UnlockedVolume::begin_rekey`], but when the volume has a recovery key a new one
    /// replaces it in the same header commit, in two keyslots: one holding the old key and one
    /// the new key, so that the new recovery key alone opens the volume at every point of the
    /// rekey; the old key's keyslot goes with the old key when the rekey finishes. Returns the
    /// new recovery key (to be shown once), or `None` when the volume had none.
    pub fn begin_rekey_renewing_recovery(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
        kdf: &RecoveryKdf,
    ) -> Result<Option<RecoveryKey>> {
        self.begin_rekey_with(key, reference, opts, Some(kdf))
    }

    pub(super) fn begin_rekey_with(
        &self,
        key: KeyMaterial,
        reference: KeyReference,
        opts: &EncryptOptions,
        renew: Option<&RecoveryKdf>,
    ) -> Result<Option<RecoveryKey>> {
        let _busy = self.inner.converting.lock();
        let _all = self.inner.locks.acquire(0, u64::MAX, true);
        self.check_steady_encrypted("rekeying")?;
        check_reference(&reference)?;
        let old_id = {
            let m = self.meta();
            let id = m
                .digests
                .iter()
                .find(|(_, d)| d.segments.contains(&0))
                .map(|(i, _)| *i);
            let id =
                id.ok_or_else(|| Error::State("no digest belongs to the data segment".into()))?;
            if digest_matches(&m.digests[&id], key.expose())? {
                return Err(Error::Usage(
                    "the new key is the current key: create a new key on the KMIP server".into(),
                ));
            }
            id
        };
        let digest = make_digest(&key, opts.pbkdf2_iterations, Vec::new())?;
        let cipher = Arc::new(XtsCipher::new(key.secret())?);
        let did = self.meta().free_digest_id();
        let old_slots = recovery_slots::recovery_keyslots(&self.meta());
        // The new recovery keyslots (old key, new key) are written before the commit that names
        // them and removes the old one, so a crash leaves one recovery key or the other.
        let renewed = match renew {
            Some(kdf) if !old_slots.is_empty() => {
                let old_raw = self.raw_key(old_id)?;
                let rk = RecoveryKey::generate()?;
                let slots = self.write_recovery_slots(
                    &rk,
                    &[(old_id, old_raw.expose()), (did, key.expose())],
                    kdf,
                )?;
                Some((rk, slots))
            }
            _ => None,
        };
        self.add_derived_keys(did, &key)?;
        let token = token_of(&reference, key.size());
        let slots = renewed.as_ref().map(|(_, s)| s.clone());
        self.commit_and_wipe(|m| {
            recovery_slots::remove(m, &old_slots);
            m.add_new_key(digest, token, ConversionKind::Rekey, Some(old_id));
            for (id, json, digest) in slots.into_iter().flatten() {
                recovery_slots::add(m, id, json, digest);
            }
        })?;
        let mut layout = self.inner.layout.write();
        layout.old = layout.new.clone();
        layout.new = Form::Xts(cipher);
        self.inner.boundary.store(0, Ordering::Release);
        Ok(renewed.map(|(rk, _)| rk))
    }

    /// Starts decrypting an encrypted volume.
    pub fn begin_decrypt(&self) -> Result<()> {
        let _busy = self.inner.converting.lock();
        let _all = self.inner.locks.acquire(0, u64::MAX, true);
        self.check_steady_encrypted("decrypting")?;
        self.commit(Metadata::begin_decrypt)?;
        let mut layout = self.inner.layout.write();
        layout.old = layout.new.clone();
        layout.new = Form::Plain;
        self.inner.boundary.store(0, Ordering::Release);
        Ok(())
    }

    pub(super) fn check_steady_encrypted(&self, what: &str) -> Result<()> {
        let m = self.meta();
        match state_of(&m) {
            State::Encrypted => {}
            s => {
                return Err(Error::State(format!(
                    "the volume is {}: {what} starts from an encrypted volume (resume a conversion under way instead)",
                    s.as_str()
                )));
            }
        }
        let foreign = crate::recovery_slots::foreign_keyslots(&m);
        if !foreign.is_empty() {
            return Err(Error::State(format!(
                "the volume has {} passphrase keyslot(s) not made by atrest that {what} would invalidate: remove them with `cryptsetup luksKillSlot` first",
                foreign.len()
            )));
        }
        Ok(())
    }

    /// Finishes the hotzone a crash left behind (called by unlock).
    pub(super) fn recover_hotzone(&self) -> Result<()> {
        let (hz, version) = match self.meta().conversion() {
            Some((_, c)) => (c.hotzone, c.version),
            None => (None, RecordVersion::V2),
        };
        let Some(hz) = hz else { return Ok(()) };
        let inner = &*self.inner;
        let _g = inner.locks.acquire(hz.offset, hz.offset + hz.size, true);
        let mut table = vec![0u8; version.table_len(hz.size) as usize];
        inner
            .dev
            .read_at(&mut table, hz.table_offset)
            .map_err(Error::io("reading the conversion checksum table"))?;
        if let Some(want) = hz.table_sha256
            && !openssl::memcmp::eq(&openssl::sha::sha256(&table), &want)
        {
            return Err(Error::State(format!(
                "the checksum table of the interrupted conversion chunk (device byte {}) is not \
                 the one the authenticated header records: the keyslots area was changed outside \
                 atrest, so the chunk at byte {} of the data segment cannot be finished safely; \
                 nothing was written. Restore the volume from a backup",
                hz.table_offset, hz.offset
            )));
        }
        let mut raw = vec![0u8; hz.size as usize];
        inner
            .dev
            .read_at(&mut raw, inner.data_offset + hz.offset)
            .map_err(Error::io("reading the interrupted conversion chunk"))?;
        let layout = inner.layout.read();
        let s = layout.sector as usize;
        let upu = s / HOTZONE_UNIT as usize;
        let e = version.entry_bytes() as usize;
        let skipped = |i: usize| {
            let g = (i * s) as u64 / SKIP_GRANULE;
            g < 64 && hz.skip & (1 << g) != 0
        };
        let mut plain = vec![0u8; s];
        let mut old_dec = vec![0u8; s];
        for (i, sector) in raw.chunks_exact_mut(s).enumerate() {
            if skipped(i) {
                // Holds no content: the conversion left it as it was, and so does recovery.
                continue;
            }
            let seg_off = hz.offset + (i * s) as u64;
            old_dec.copy_from_slice(sector);
            layout.code(&layout.old, false, seg_off, &mut old_dec)?;
            plain.copy_from_slice(sector);
            layout.code(&layout.new, false, seg_off, &mut plain)?;
            for u in 0..upu {
                let idx = i * upu + u;
                let r = u * HOTZONE_UNIT as usize..(u + 1) * HOTZONE_UNIT as usize;
                if unit_matches(version, &sector[r.clone()], &table[idx * e..idx * e + e]) {
                    // Still the old form.
                    plain[r.clone()].copy_from_slice(&old_dec[r]);
                }
            }
            layout.code(&layout.new, true, seg_off, &mut plain)?;
            sector.copy_from_slice(&plain);
        }
        // Written back granule by granule: a skipped one is not touched (a hole stays a hole).
        for (g, part) in raw.chunks(SKIP_GRANULE as usize).enumerate() {
            if g < 64 && hz.skip & (1 << g) != 0 {
                continue;
            }
            inner
                .dev
                .write_at(
                    part,
                    inner.data_offset + hz.offset + g as u64 * SKIP_GRANULE,
                )
                .map_err(Error::io("rewriting the interrupted conversion chunk"))?;
        }
        inner
            .dev
            .flush()
            .map_err(Error::io("flushing the data segment"))?;
        drop(layout);
        let end = hz.offset + hz.size;
        let v = self.record_version();
        self.commit(|m| m.set_boundary(end, None, v))?;
        inner.boundary.store(end, Ordering::Release);
        Ok(())
    }

    /// The version of the conversion record this process writes: 2 (a record of version 1
    /// is recovered and resumed, and becomes version 2 with the next commit).
    pub(super) fn record_version(&self) -> RecordVersion {
        #[cfg(feature = "testing")]
        if self.inner.legacy_record.load(Ordering::Relaxed) {
            return RecordVersion::V1;
        }
        RecordVersion::V2
    }

    /// Makes this volume's conversion write records of version 1 (SHA-256 table), as earlier
    /// atrest versions did, so that tests can check that such a record is still recovered and
    /// resumed. Only with the `testing` feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn write_version_1_records(&self, on: bool) {
        self.inner.legacy_record.store(on, Ordering::Relaxed);
    }

    /// Runs (or resumes) the conversion under way until it is finished or `opts.stop` is set,
    /// converting the whole data segment. See [`UnlockedVolume::convert_with`].
    pub fn convert(
        &self,
        opts: &ConvertOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<State> {
        self.convert_with(opts, None, progress)
    }

    /// Runs (or resumes) the conversion under way until it is finished or `opts.stop` is set.
    /// Each chunk is committed in the header; a crash at any point loses nothing (see
    /// docs/volume-format.md). `progress` is called after each chunk. Returns the final state.
    ///
    /// With `used` (used-space-only conversion), each [`SKIP_GRANULE`] of a chunk is asked
    /// about while the chunk's lock is held; one that holds no content is not read or written
    /// (it keeps what it held: a hole stays a hole) and counts as converted. `None` converts
    /// every byte (the full conversion, which also overwrites free space).
    pub fn convert_with(
        &self,
        opts: &ConvertOptions,
        used: Option<Arc<dyn UsedRanges>>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<State> {
        let _busy = self.inner.converting.lock();
        let inner = &*self.inner;
        let (kind, ks_off, ks_size) = {
            let m = self.meta();
            match m.conversion() {
                None => return Ok(state_of(&m)),
                Some((_, c)) => (c.kind, m.keyslots_offset(), m.keyslots_size),
            }
        };
        let version = self.record_version();
        // A version 1 record has no skip mask: it converts every byte.
        let used = used.filter(|_| version == RecordVersion::V2);
        let sector = self.sector();
        let entry = version.entry_bytes();
        // Conversion tables stay below the recovery keyslots' region.
        let max_chunk = (recovery_slots::table_space(ks_size) / 2 / entry * HOTZONE_UNIT)
            .min(MAX_HOTZONE_SIZE)
            / sector
            * sector;
        let chunk = (opts.chunk_size / sector * sector).clamp(sector, max_chunk.max(sector));
        if max_chunk < sector {
            return Err(Error::State(
                "the keyslots area is too small for a conversion table".into(),
            ));
        }
        let table_len = version.table_len(chunk);
        let total = inner.data_size.load(Ordering::Acquire);
        let started = Instant::now();
        let first = inner.boundary.load(Ordering::Acquire);
        let mut slot = 0u64;
        let mut prev_guard = None;
        let threads = opts.threads.max(1);
        // With two threads or more, the checksums of the next chunk (pass 1) run on a third of
        // the threads (at least one) while the others convert and write this chunk (pass 2,
        // about twice the work per byte); the thread that led pass 1 then joins them.
        let pipelined = threads >= 2;
        let ahead_threads = (threads / 3).max(1);
        let stopping = || {
            opts.stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        };
        let prepare = |b: u64, threads: usize| -> Result<Prepared<'_>> {
            let len = chunk.min(total - b);
            let guard = inner.locks.acquire(b, b + len, true);
            // Decided under the chunk's lock: no write to it can start or be under way.
            let skip = skip_mask(used.as_deref(), b, len);
            let mut table = vec![0u8; version.table_len(len) as usize];
            // The checksums of the old form, piece by piece.
            let per_piece = PIECE / HOTZONE_UNIT as usize * entry as usize;
            per_granule(threads, len, skip, &mut table, entry, |g, t, piece| {
                let g_off = b + g * SKIP_GRANULE;
                let g_end = (g_off + SKIP_GRANULE).min(b + len);
                for (p, t) in t.chunks_mut(per_piece).enumerate() {
                    let off = g_off + (p * PIECE) as u64;
                    let d = &mut piece[..(g_end - off).min(PIECE as u64) as usize];
                    inner
                        .dev
                        .read_at(d, inner.data_offset + off)
                        .map_err(Error::io("reading the data segment"))?;
                    unit_checksums(version, d, t);
                }
                Ok(())
            })?;
            Ok(Prepared {
                b,
                len,
                guard,
                skip,
                table,
            })
        };
        let mut next: Option<Prepared<'_>> = None;
        loop {
            let b = inner.boundary.load(Ordering::Acquire);
            let stop = stopping();
            if b >= total || stop {
                // A chunk prepared ahead is released untouched.
                drop(next.take());
                self.flush_data()?;
                if stop && b < total {
                    self.commit(|m| m.set_boundary(b, None, version))?;
                    return Ok(self.state());
                }
                // The last chunk stays locked until the commit that retires its hotzone. The old
                // key's recovery keyslots go with its digest, and their areas are wiped.
                self.commit_and_wipe(Metadata::finish)?;
                drop(prev_guard);
                let _all = inner.locks.acquire(0, u64::MAX, true);
                let mut layout = inner.layout.write();
                layout.old = layout.new.clone();
                return Ok(self.state());
            }
            // Used-space-only: a run of chunks that hold no content is locked, asked, and passed
            // over by one commit; nothing is read or written there, and no table is needed.
            if used.is_some() {
                let all = |len: u64| {
                    let g = len.div_ceil(SKIP_GRANULE);
                    if g >= 64 { u64::MAX } else { (1u64 << g) - 1 }
                };
                let mut guards = Vec::new();
                let mut end = b;
                match next.take() {
                    Some(p) if p.b == b && p.skip == all(p.len) => {
                        end = b + p.len;
                        guards.push(p.guard);
                    }
                    other => next = other,
                }
                if next.is_none() {
                    while end < total && end - b < MAX_SKIP_RUN {
                        let len = chunk.min(total - end);
                        let guard = inner.locks.acquire(end, end + len, true);
                        // Decided under the lock, as for a converted chunk.
                        if skip_mask(used.as_deref(), end, len) != all(len) {
                            break;
                        }
                        guards.push(guard);
                        end += len;
                    }
                }
                if end > b {
                    // The previous chunk's converted bytes are durable before the commit that
                    // retires its hotzone.
                    self.flush_data()?;
                    self.commit(|m| m.set_boundary(end, None, version))?;
                    inner.boundary.store(end, Ordering::Release);
                    drop(prev_guard.take());
                    drop(guards);
                    progress(&progress_at(kind, first, end, total, started));
                    continue;
                }
            }
            let cur = match next.take() {
                Some(p) if p.b == b => p,
                _ => prepare(b, threads)?,
            };
            let len = cur.len;
            let table_offset = ks_off + slot * table_len;
            inner
                .dev
                .write_at(&cur.table, table_offset)
                .map_err(Error::io("writing the conversion checksum table"))?;
            // Makes durable: the previous chunk, online writes before the lock, the table, and
            // the previous commit's secondary header copy.
            self.flush_data()?;
            let hz = Hotzone {
                offset: b,
                size: len,
                table_offset,
                table_sha256: (version == RecordVersion::V2)
                    .then(|| openssl::sha::sha256(&cur.table)),
                skip: cur.skip,
            };
            // The secondary copy's flush is the next chunk's flush (step 5).
            self.commit_with(|m| m.set_boundary(b, Some(hz), version), true)?;
            drop(prev_guard.take());
            // Pass 2: read again (the chunk is locked, so these are the same bytes, now from
            // the cache), convert and write back piece by piece, and start each granule's
            // write-back at once. Granules that hold no content are not touched.
            let granules = Granules::of(len, cur.skip);
            let convert = || -> Result<()> {
                let layout = inner.layout.read();
                let mut piece = vec![0u8; PIECE.min(len as usize)];
                while let Some(g) = granules.take() {
                    let g_off = b + g * SKIP_GRANULE;
                    let g_end = (g_off + SKIP_GRANULE).min(b + len);
                    let mut off = g_off;
                    while off < g_end {
                        let d = &mut piece[..(g_end - off).min(PIECE as u64) as usize];
                        let done = inner
                            .dev
                            .read_at(d, inner.data_offset + off)
                            .map_err(Error::io("reading the data segment"))
                            .and_then(|()| layout.code(&layout.old, false, off, d))
                            .and_then(|()| layout.code(&layout.new, true, off, d))
                            .and_then(|()| {
                                inner
                                    .dev
                                    .write_at(d, inner.data_offset + off)
                                    .map_err(Error::io("writing the data segment"))
                            });
                        if let Err(e) = done {
                            granules.close();
                            return Err(e);
                        }
                        off += d.len() as u64;
                    }
                    inner
                        .dev
                        .start_writeback(inner.data_offset + g_off, g_end - g_off);
                }
                Ok(())
            };
            let nb = b + len;
            let ahead = pipelined && nb < total && !stopping();
            let (written, prepared) = std::thread::scope(|s| {
                let first = ahead.then(|| {
                    s.spawn(|| {
                        let prepared = prepare(nb, ahead_threads);
                        (prepared, convert())
                    })
                });
                let others: Vec<_> = (1..threads)
                    .skip(if ahead { ahead_threads } else { 0 })
                    .map(|_| s.spawn(convert))
                    .collect();
                let mut written = convert();
                let panicked = || Error::Usage("a conversion worker panicked".into());
                for h in others {
                    let r = h.join().unwrap_or_else(|_| Err(panicked()));
                    written = written.and(r);
                }
                let prepared = match first.map(|h| h.join()) {
                    None => None,
                    Some(Ok((prepared, w))) => {
                        written = written.and(w);
                        Some(prepared)
                    }
                    Some(Err(_)) => Some(Err(panicked())),
                };
                (written, prepared)
            });
            written?;
            next = prepared.transpose()?;
            let guard = cur.guard;
            inner.boundary.store(b + len, Ordering::Release);
            prev_guard = Some(guard);
            slot ^= 1;
            progress(&progress_at(kind, first, b + len, total, started));
        }
    }
}
