//! Allocation quotas: at most so many allocations per user and in total.
//!
//! Pure rules; [`crate::turn::allocations`] applies them to the live table atomically, under
//! its lock, so concurrent Allocates (TCP streams run in parallel) cannot overshoot them.

/// Why an Allocate was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// 486 Allocation Quota Reached.
    PerUser,
    /// 508 Insufficient Capacity.
    Total,
}

/// The configured limits (`[turn] max_allocations_per_user`, `max_allocations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub per_user: usize,
    pub total: usize,
}

impl QuotaLimits {
    /// May one more allocation be made, with `total_held` held in all and `user_held` by its user?
    pub fn check(&self, total_held: usize, user_held: usize) -> Result<(), QuotaRefusal> {
        if total_held >= self.total {
            return Err(QuotaRefusal::Total);
        }
        if user_held >= self.per_user {
            return Err(QuotaRefusal::PerUser);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_limit_is_checked_before_the_users() {
        let limits = QuotaLimits { per_user: 2, total: 3 };
        assert_eq!(limits.check(0, 0), Ok(()));
        assert_eq!(limits.check(2, 1), Ok(()));
        assert_eq!(limits.check(2, 2), Err(QuotaRefusal::PerUser));
        assert_eq!(limits.check(3, 0), Err(QuotaRefusal::Total));
        assert_eq!(limits.check(3, 2), Err(QuotaRefusal::Total));
    }
}
