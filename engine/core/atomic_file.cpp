#include "engine/core/atomic_file.h"

#include "engine/core/error.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace moebius {

namespace {
std::atomic<unsigned> temp_counter{0};

std::string errno_text() {
    return std::strerror(errno);
}

fs::path parent_or_dot(const fs::path& p) {
    fs::path parent = p.parent_path();
    return parent.empty() ? fs::path(".") : parent;
}

void write_all(int fd, const char* p, size_t n, const fs::path& file) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            throw Error(file.string() + ": write failed: " + errno_text());
        }
        p += w;
        n -= size_t(w);
    }
}
} // namespace

void fsync_path(const fs::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw Error(path.string() + ": cannot open for fsync: " + errno_text());
    int rc  = ::fsync(fd);
    int err = errno;
    ::close(fd);
    // Some filesystems refuse fsync on directories (EINVAL); the rename is still atomic there.
    if (rc != 0 && !(fs::is_directory(path) && (err == EINVAL || err == EBADF)))
        throw Error(path.string() + ": fsync failed: " + std::strerror(err));
}

AtomicFile::AtomicFile(fs::path final_path) : final_(std::move(final_path)) {
    if (final_.filename().empty())
        throw InputError(final_.string() + ": not a file path");
    // Hidden, unique per process and per object, so concurrent writers of the same target never share a temp.
    std::string name = ".";
    name += final_.filename().string();
    name += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(temp_counter.fetch_add(1));
    temp_ = parent_or_dot(final_) / name;
}

AtomicFile::~AtomicFile() {
    if (!committed_) {
        std::error_code ec;
        fs::remove(temp_, ec);
    }
}

void AtomicFile::commit() {
    if (committed_)
        return;
    fsync_path(temp_);
    std::error_code ec;
    fs::rename(temp_, final_, ec);
    if (ec)
        throw Error(final_.string() + ": cannot rename temporary file into place: " + ec.message());
    committed_ = true;
    fsync_path(parent_or_dot(final_)); // make the rename itself durable
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
    AtomicFile f(path);
    int        fd = ::open(f.temp_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        throw Error(f.temp_path().string() + ": cannot create: " + errno_text());
    try {
        write_all(fd, bytes.data(), bytes.size(), f.temp_path());
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::close(fd) != 0)
        throw Error(f.temp_path().string() + ": close failed: " + errno_text());
    f.commit();
}

AtomicDir::AtomicDir(fs::path out, bool force) : final_(std::move(out)), force_(force) {
    // "out/" would give an empty filename; normalise so the temp dir is a sibling.
    if (final_.filename().empty())
        final_ = final_.parent_path();
    if (final_.empty())
        throw InputError("empty output directory path");
    std::error_code ec;
    if (fs::exists(final_, ec) && !force_) {
        if (!fs::is_directory(final_))
            throw InputError(final_.string() + ": exists and is not a directory");
        if (!fs::is_empty(final_))
            throw InputError(final_.string() + ": directory exists and is not empty");
    }
    temp_ = final_;
    temp_ += ".tmp-" + std::to_string(::getpid());
    fs::remove_all(temp_, ec); // a stale temp from an earlier crashed run with the same pid
    fs::create_directories(temp_, ec);
    if (ec)
        throw Error(temp_.string() + ": cannot create directory: " + ec.message());
}

AtomicDir::~AtomicDir() {
    if (!committed_) {
        std::error_code ec;
        fs::remove_all(temp_, ec);
    }
}

void AtomicDir::commit() {
    if (committed_)
        return;
    // Writers inside may not have synced their files; do it here so the renamed directory is complete on disk.
    for (const auto& e : fs::recursive_directory_iterator(temp_)) {
        if (e.is_regular_file() || e.is_directory())
            fsync_path(e.path());
    }
    fsync_path(temp_);
    std::error_code ec;
    fs::path        old;
    if (fs::exists(final_, ec)) {
        bool empty_dir = fs::is_directory(final_) && fs::is_empty(final_);
        if (!force_ && !empty_dir)
            throw InputError(final_.string() + ": directory exists and is not empty");
        old = final_;
        old += ".old-" + std::to_string(::getpid());
        fs::remove_all(old, ec);
        fs::rename(final_, old, ec);
        if (ec)
            throw Error(final_.string() + ": cannot move existing directory aside: " + ec.message());
    }
    fs::rename(temp_, final_, ec);
    if (ec) {
        std::error_code ec2;
        if (!old.empty())
            fs::rename(old, final_, ec2); // put the previous contents back
        throw Error(final_.string() + ": cannot rename temporary directory into place: " + ec.message());
    }
    committed_ = true;
    fsync_path(parent_or_dot(final_));
    if (!old.empty())
        fs::remove_all(old, ec);
}

} // namespace moebius
