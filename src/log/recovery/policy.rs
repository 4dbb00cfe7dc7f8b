//! What the recovery mode makes of what a segment's check found (docs/FORMAT.md, "Recovery").
//!
//! Pure: from where the damage is (which segment, the header or the frames, whether durable
//! history follows it) and who is scanning, to keep / cut here / refuse. The scan does what
//! the decision says; `repair` does a writer's part of a cut.

use super::Access;
use crate::config::RecoveryMode;

/// Where in a segment the damage is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The segment header (offset 0): nothing of the segment can be trusted.
    Header,
    /// The segment header was never written over the file's (zeros, or the file's earlier
    /// header), or only partly (`HeaderProblem::TornActivation`): what a roll that a power
    /// loss tore leaves, with nothing acknowledged in the segment, when it is the last one.
    Unactivated,
    /// At the end of its valid frames: a bad frame, bytes after the last frame, or (when
    /// evidence shows durable history was lost) the end of the frames itself.
    Frames,
    /// At the end of its valid frames, a frame whose CRC matches but that fails a later check
    /// (`FormatErrorKind::past_crc`): written whole, by a writer's bug, so never a torn tail,
    /// and it may hold acknowledged writes: only point-in-time recovery cuts it.
    Malformed,
}

/// What the scan found in one segment, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Situation {
    /// The segment is the last one of the log.
    pub last: bool,
    /// Where the damage is; `None` if there is none.
    pub damage: Option<Place>,
    /// Evidence (later frames, or the clean-close mark) shows that the damage cut durable
    /// history: it is not a torn tail. Only sought where [`seeks_evidence`] says.
    pub durable: bool,
}

/// What the scan does with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Keep it whole, and go on with the next one.
    Keep,
    /// The log ends at the damage: keep what is before it, drop what is after it (a reader
    /// stops there; a writer makes it so on disk).
    Cut,
    /// Fail the scan with this error, changing nothing.
    Refuse(Refusal),
}

/// The error a refusing scan returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `Error::Corrupt`: damage the mode does not cut.
    Corrupt,
    /// `Error::DamagedHistory`: damage to durable history, which only `PointInTime` cuts.
    DamagedHistory,
}

/// What `mode` does with `s`.
pub(crate) fn decide(mode: RecoveryMode, s: &Situation) -> Decision {
    if s.durable {
        // Point in time: the log ends here, and the open reports what it cut.
        return match mode {
            RecoveryMode::PointInTime => Decision::Cut,
            _ => Decision::Refuse(Refusal::DamagedHistory),
        };
    }
    let Some(place) = s.damage else {
        return Decision::Keep;
    };
    // A roll names a segment before its header is durable, and makes both durable before
    // the next roll: only the last segment can be an unactivated one, and then nothing in it
    // was acknowledged (it goes as a torn tail does). Any other bad header is never a crash
    // artifact: only point-in-time recovery drops a segment for it. Nor is a frame written
    // whole and wrong (`Place::Malformed`): a torn write cannot leave a matching CRC.
    let cut = match mode {
        RecoveryMode::AbsoluteConsistency => false,
        RecoveryMode::TolerateCorruptedTail => {
            s.last && matches!(place, Place::Frames | Place::Unactivated)
        }
        RecoveryMode::PointInTime => true,
    };
    if cut {
        Decision::Cut
    } else {
        Decision::Refuse(Refusal::Corrupt)
    }
}

/// Whether only zeros may follow the frames of a segment: the last one, opened by a writer. A
/// reader skips this check: the engine may be writing there right now.
pub(crate) fn checks_zeros_after(access: Access, last: bool) -> bool {
    access != Access::Reader && last
}

/// Whether the scan looks for evidence that the damage (or the end of the frames) cut durable
/// history: a writer does, before it changes a byte of the last segment, unless its header is
/// bad; a header never written is looked past too (frames far enough on, or a clean-close
/// mark naming the segment, prove it was no torn roll; docs/FORMAT.md, "Recovery").
pub(crate) fn seeks_evidence(access: Access, last: bool, damage: Option<Place>) -> bool {
    access != Access::Reader && last && damage != Some(Place::Header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Cut, Keep, Refuse};
    use Place::{Frames, Header, Malformed, Unactivated};
    use RecoveryMode::{AbsoluteConsistency as Absolute, PointInTime, TolerateCorruptedTail};
    use Refusal::{Corrupt, DamagedHistory};

    /// Every position the scan can find damage in (`durable` only where evidence is sought:
    /// a writer's last segment, not at its header), under every mode.
    #[test]
    fn decisions_for_every_mode_and_position() {
        #[rustfmt::skip]
        let table: &[(RecoveryMode, bool, Option<Place>, bool, Decision)] = &[
            // mode,              last,  damage,        durable, decision
            (TolerateCorruptedTail, false, None,          false, Keep),
            (TolerateCorruptedTail, false, Some(Header),  false, Refuse(Corrupt)),
            (TolerateCorruptedTail, false, Some(Frames),  false, Refuse(Corrupt)),
            (TolerateCorruptedTail, true,  None,          false, Keep),
            (TolerateCorruptedTail, true,  Some(Header),  false, Refuse(Corrupt)),
            (TolerateCorruptedTail, true,  Some(Frames),  false, Cut),
            (TolerateCorruptedTail, true,  Some(Frames),  true,  Refuse(DamagedHistory)),
            (PointInTime,           false, None,          false, Keep),
            (PointInTime,           false, Some(Header),  false, Cut),
            (PointInTime,           false, Some(Frames),  false, Cut),
            (PointInTime,           true,  None,          false, Keep),
            (PointInTime,           true,  Some(Header),  false, Cut),
            (PointInTime,           true,  Some(Frames),  false, Cut),
            (PointInTime,           true,  Some(Frames),  true,  Cut),
            (Absolute,              false, None,          false, Keep),
            (Absolute,              false, Some(Header),  false, Refuse(Corrupt)),
            (Absolute,              false, Some(Frames),  false, Refuse(Corrupt)),
            (Absolute,              true,  None,          false, Keep),
            (Absolute,              true,  Some(Header),  false, Refuse(Corrupt)),
            (Absolute,              true,  Some(Frames),  false, Refuse(Corrupt)),
            (Absolute,              true,  Some(Frames),  true,  Refuse(DamagedHistory)),
            // A header never written: the last segment goes as a torn tail does (a roll
            // that a power loss tore); before the last it is damage.
            (TolerateCorruptedTail, false, Some(Unactivated), false, Refuse(Corrupt)),
            (TolerateCorruptedTail, true,  Some(Unactivated), false, Cut),
            (PointInTime,           false, Some(Unactivated), false, Cut),
            (PointInTime,           true,  Some(Unactivated), false, Cut),
            (Absolute,              false, Some(Unactivated), false, Refuse(Corrupt)),
            (Absolute,              true,  Some(Unactivated), false, Refuse(Corrupt)),
            // A frame written whole and wrong: never a torn tail.
            (TolerateCorruptedTail, false, Some(Malformed), false, Refuse(Corrupt)),
            (TolerateCorruptedTail, true,  Some(Malformed), false, Refuse(Corrupt)),
            (TolerateCorruptedTail, true,  Some(Malformed), true,  Refuse(DamagedHistory)),
            (PointInTime,           false, Some(Malformed), false, Cut),
            (PointInTime,           true,  Some(Malformed), false, Cut),
            (PointInTime,           true,  Some(Malformed), true,  Cut),
            (Absolute,              false, Some(Malformed), false, Refuse(Corrupt)),
            (Absolute,              true,  Some(Malformed), false, Refuse(Corrupt)),
            (Absolute,              true,  Some(Malformed), true,  Refuse(DamagedHistory)),
        ];
        for &(mode, last, damage, durable, want) in table {
            let s = Situation {
                last,
                damage,
                durable,
            };
            assert_eq!(decide(mode, &s), want, "{mode:?} {s:?}");
        }
        // Each mode has its rows: 5 positions before the last segment, 7 in it.
        for mode in [TolerateCorruptedTail, PointInTime, Absolute] {
            assert_eq!(table.iter().filter(|r| r.0 == mode).count(), 12, "{mode:?}");
        }
    }

    /// A segment is kept exactly when nothing is wrong with it, under every mode and in every
    /// combination, reachable or not.
    #[test]
    fn keeps_only_undamaged_segments() {
        for mode in [TolerateCorruptedTail, PointInTime, Absolute] {
            for last in [false, true] {
                for damage in [None, Some(Header), Some(Frames), Some(Malformed)] {
                    for durable in [false, true] {
                        let s = Situation {
                            last,
                            damage,
                            durable,
                        };
                        let kept = decide(mode, &s) == Keep;
                        assert_eq!(kept, damage.is_none() && !durable, "{mode:?} {s:?}");
                    }
                }
            }
        }
    }

    /// What a reader and a writer look at: a reader never checks the bytes after the frames
    /// nor looks for evidence; a writer does both, in the last segment only, and seeks no
    /// evidence past a bad header.
    #[test]
    fn what_readers_and_writers_check() {
        use Access::{Checker, Reader, Writer};
        #[rustfmt::skip]
        let table: &[(Access, bool, Option<Place>, bool, bool)] = &[
            // access, last, damage,      zeros after, evidence
            (Reader, false, None,         false, false),
            (Reader, false, Some(Frames), false, false),
            (Reader, true,  None,         false, false),
            (Reader, true,  Some(Header), false, false),
            (Reader, true,  Some(Frames), false, false),
            (Writer, false, None,         false, false),
            (Writer, false, Some(Frames), false, false),
            (Writer, true,  None,         true,  true),
            (Writer, true,  Some(Header), true,  false),
            (Writer, true,  Some(Unactivated), true, true),
            (Writer, true,  Some(Frames), true,  true),
            // A check judges as the writer does, and changes nothing (`scan_once`).
            (Checker, false, Some(Frames), false, false),
            (Checker, true,  None,         true,  true),
            (Checker, true,  Some(Header), true,  false),
            (Checker, true,  Some(Unactivated), true, true),
            (Checker, true,  Some(Frames), true,  true),
        ];
        for &(access, last, damage, zeros, evidence) in table {
            let who = match access {
                Writer => "writer",
                Reader => "reader",
                Checker => "checker",
            };
            assert_eq!(checks_zeros_after(access, last), zeros, "{who} last={last}");
            assert_eq!(
                seeks_evidence(access, last, damage),
                evidence,
                "{who} last={last} {damage:?}"
            );
        }
    }
}
