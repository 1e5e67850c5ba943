//! The unlocked volume: its data segment as a block device (reads and writes in the old or
//! new form on either side of the boundary), growth, and header commits.

use super::*;

impl UnlockedVolume {
    pub(super) fn meta(&self) -> parking_lot::MutexGuard<'_, Metadata> {
        self.inner.meta.lock()
    }

    /// State.
    pub fn state(&self) -> State {
        state_of(&self.meta())
    }

    /// What `dump` shows.
    pub fn info(&self) -> VolumeInfo {
        info_of(&self.meta(), self.inner.dev.len(), &self.inner.report)
    }

    /// A key for what the volume stores to seal itself with (the content store seals its audit
    /// history with it): HKDF-SHA256 of the volume key that authenticates the header now (the
    /// data segment's key; the new key while encrypting, the old one while rekeying or
    /// decrypting), info [`SEAL_KEY_INFO`]. `None` on a plain volume. It changes when a
    /// conversion finishes; one-way, so it tells nothing about the volume key.
    pub fn seal_key(&self) -> Option<SecretBytes> {
        let d = self.meta().authenticating_digest()?;
        self.inner.derived.lock().get(&d).map(|k| k.seal.clone())
    }

    /// A copy of the header metadata.
    pub fn metadata(&self) -> Metadata {
        self.meta().clone()
    }

    pub(super) fn sector(&self) -> u64 {
        self.inner.layout.read().sector
    }

    pub(super) fn rw(
        &self,
        offset: u64,
        len: usize,
        write: Option<&[u8]>,
        out: Option<&mut [u8]>,
    ) -> Result<()> {
        let inner = &*self.inner;
        check_range(offset, len, inner.data_size.load(Ordering::Acquire))
            .map_err(Error::io("data segment access"))?;
        if len == 0 {
            return Ok(());
        }
        // Lock order: byte range, then layout. The range is aligned to the largest sector size
        // so it covers whole sectors whatever the layout says.
        let s = MAX_SECTOR;
        let start = offset / s * s;
        let end = (offset + len as u64).div_ceil(s) * s;
        let _g = inner.locks.acquire(start, end, write.is_some());
        let layout = inner.layout.read();
        let s = layout.sector;
        let start = offset / s * s;
        let end = (offset + len as u64).div_ceil(s) * s;
        let boundary = inner.boundary.load(Ordering::Acquire);
        let head = (offset - start) as usize;
        let aligned = head == 0 && end - start == len as u64;
        if let (Some(data), true) = (write, aligned) {
            // Aligned: no read, and no copy at all where the bytes are stored as they are.
            let dev_off = inner.data_offset + start;
            let what = Error::io("writing the data segment");
            if layout.stores_plain(boundary, start, end) {
                return inner.dev.write_at(data, dev_off).map_err(what);
            }
            let mut buf = data.to_vec();
            layout.code_split(boundary, true, start, &mut buf)?;
            return inner.dev.write_at(&buf, dev_off).map_err(what);
        }
        let mut buf = vec![0u8; (end - start) as usize];
        let read_dev = |buf: &mut [u8]| {
            inner
                .dev
                .read_at(buf, inner.data_offset + start)
                .map_err(Error::io("reading the data segment"))
        };
        match (write, out) {
            (Some(data), _) => {
                if !aligned {
                    read_dev(&mut buf)?;
                    layout.code_split(boundary, false, start, &mut buf)?;
                }
                buf[head..head + len].copy_from_slice(data);
                layout.code_split(boundary, true, start, &mut buf)?;
                inner
                    .dev
                    .write_at(&buf, inner.data_offset + start)
                    .map_err(Error::io("writing the data segment"))
            }
            (None, Some(out)) => {
                if aligned {
                    inner
                        .dev
                        .read_at(out, inner.data_offset + start)
                        .map_err(Error::io("reading the data segment"))?;
                    layout.code_split(boundary, false, start, out)
                } else {
                    read_dev(&mut buf)?;
                    layout.code_split(boundary, false, start, &mut buf)?;
                    out.copy_from_slice(&buf[head..head + len]);
                    Ok(())
                }
            }
            (None, None) => Ok(()),
        }
    }

    /// Extends the data segment to the end of the device, after the disk or image grew (a VM
    /// disk extended, an image file made longer), in the plain and the encrypted state: the new
    /// size goes into the header through a commit, signed under the volume key
    /// like every commit. The new space is usable at once by whatever uses this volume. Refused
    /// during a conversion, and when the device is now smaller than the data segment. Returns
    /// the data size before and after (equal when the device did not grow).
    pub fn grow(&self) -> Result<(u64, u64)> {
        let inner = &*self.inner;
        // A conversion holds this for its whole run, and beginning one takes it too.
        let Some(_busy) = inner.converting.try_lock() else {
            return Err(Error::State(
                "a conversion is running on this volume; grow it once the conversion has \
                 finished"
                    .into(),
            ));
        };
        let state = self.state();
        if matches!(
            state,
            State::Encrypting | State::Rekeying | State::Decrypting
        ) {
            return Err(Error::State(format!(
                "the volume is {} (a conversion is under way); finish the conversion (run it \
                 again to resume), then grow the volume",
                state.as_str()
            )));
        }
        let (dev_len, new) = self.device_room()?;
        let fixed = self.meta().segment.size.is_some();
        let old = inner.data_size.load(Ordering::Acquire);
        if new < old {
            return Err(Error::State(format!(
                "the device ({dev_len} bytes) is now smaller than the end of the data segment \
                 ({} bytes); a volume never shrinks: give the device its size back",
                inner.data_offset + old
            )));
        }
        if new == old {
            return Ok((old, old));
        }
        // A `dynamic` segment (cryptsetup's choice) already runs to the end of the device.
        if fixed {
            self.commit(|m| m.segment.size = Some(new))?;
        }
        inner.data_size.store(new, Ordering::Release);
        inner.boundary.store(new, Ordering::Release);
        Ok((old, new))
    }

    /// Bytes [`UnlockedVolume::grow`] would add now: the device's size is read again (it may
    /// have grown since the volume was opened), less the end of the data segment, in whole
    /// sectors. 0 when the device did not grow (or shrank, which `grow` refuses).
    pub fn growable(&self) -> Result<u64> {
        let (_, room) = self.device_room()?;
        Ok(room.saturating_sub(self.inner.data_size.load(Ordering::Acquire)))
    }

    /// The device's size, read again, and the data segment that would fill it: from the data
    /// offset to the end of the device, in whole sectors.
    fn device_room(&self) -> Result<(u64, u64)> {
        let inner = &*self.inner;
        let dev_len = inner
            .dev
            .refresh_len()
            .map_err(Error::io("reading the size of the device"))?;
        let sector = sector_of(&self.meta()) as u64;
        Ok((
            dev_len,
            dev_len.saturating_sub(inner.data_offset) / sector * sector,
        ))
    }

    /// Commits the header changed by `f`, signed under its authenticating key, so that a
    /// crash between two commits always leaves a header whose MAC verifies.
    pub(super) fn commit(&self, f: impl FnOnce(&mut Metadata)) -> Result<()> {
        self.commit_with(f, false)
    }

    /// [`UnlockedVolume::commit`]; with `defer`, the secondary copy's flush is left to the next
    /// flush of the device (a conversion's next chunk makes one before it commits again), and
    /// any commit flushes first while one is owed, so at most one header copy is ever in flight.
    pub(super) fn commit_with(&self, f: impl FnOnce(&mut Metadata), defer: bool) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::State(
                "the volume was opened read-only; its header is not written".into(),
            ));
        }
        let mut m = self.meta();
        let mut next = m.clone();
        f(&mut next);
        let mac = match next.authenticating_digest() {
            None => None,
            Some(d) => {
                let keys = self.inner.derived.lock();
                let key = keys.get(&d).map(|k| &k.mac).ok_or_else(|| {
                    Error::State(format!(
                        "no verified key for digest {d} to sign the header with; unlock with \
                         every key the volume names"
                    ))
                })?;
                Some(key.sign(&next)?)
            }
        };
        next.set_mac(mac);
        if self.inner.header_flush_owed.swap(false, Ordering::AcqRel) {
            self.inner
                .dev
                .flush()
                .map_err(Error::io("flushing the secondary LUKS2 header"))?;
        }
        if defer {
            luks2::write_header_deferred(&*self.inner.dev, &mut next)?;
            self.inner.header_flush_owed.store(true, Ordering::Release);
        } else {
            luks2::write_header(&*self.inner.dev, &mut next)?;
        }
        *m = next;
        Ok(())
    }

    /// Flushes the device from the conversion's thread, after its own writes: this also makes
    /// durable a secondary header copy whose flush a commit left owed.
    pub(super) fn flush_data(&self) -> Result<()> {
        self.inner
            .dev
            .flush()
            .map_err(Error::io("flushing the data segment"))?;
        self.inner.header_flush_owed.store(false, Ordering::Release);
        Ok(())
    }

    /// Keeps the keys derived from a new key (whose digest will get id `digest`) for the
    /// commits that follow.
    pub(super) fn add_derived_keys(&self, digest: u32, key: &KeyMaterial) -> Result<()> {
        let k = DerivedKeys::of(key.expose())?;
        self.inner.derived.lock().insert(digest, k);
        Ok(())
    }
}

/// The `atrest-kmip` token of a new key (its digest id is filled in by
/// [`Metadata::add_new_key`]).
pub(super) fn token_of(r: &KeyReference, size: KeySize) -> KmipToken {
    KmipToken {
        unique_identifier: r.unique_identifier.clone(),
        servers: r.servers.clone(),
        key_bits: size.bits(),
        created: r.created.clone(),
        digest: 0,
    }
}

pub(super) fn check_reference(r: &KeyReference) -> Result<()> {
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= luks2::MAX_TOKEN_TEXT && !s.chars().any(char::is_control)
    };
    if !ok(&r.unique_identifier) || !ok(&r.created) {
        return Err(Error::Usage("the key reference needs a unique identifier and a creation time (1…256 printable bytes)".into()));
    }
    if r.servers.is_empty()
        || r.servers.len() > luks2::MAX_SERVERS
        || !r.servers.iter().all(|s| ok(s))
    {
        return Err(Error::Usage(format!(
            "the key reference needs 1…{} servers",
            luks2::MAX_SERVERS
        )));
    }
    Ok(())
}

impl BlockDevice for UnlockedVolume {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.rw(offset, len, None, Some(buf)).map_err(io_err)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.rw(offset, buf.len(), Some(buf), None).map_err(io_err)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.dev.flush()
    }

    fn len(&self) -> u64 {
        self.inner.data_size.load(Ordering::Acquire)
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner
            .dev
            .start_writeback(self.inner.data_offset + offset, len)
    }
}
