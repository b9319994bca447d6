/*
 * Ring-0 interrupt and exception handlers.  Each instruction here costs about
 * a microsecond of emulation, so the hot ones (timer, idle) are a handful of
 * instructions.  A handler finds its CPU's block as RSP & ~(CPU_BLOCK_SIZE-1).
 */
    .text

/* LAPIC timer: count the tick in the per-CPU block, EOI, return. */
    .globl timer_handler
timer_handler:
    push    %rax
    mov     %rsp, %rax
    and     $~({CPU_BLOCK_SIZE} - 1), %rax
    incq    {CPU_TICKS}(%rax)
    mov     $0xfee000b0, %eax                   /* LAPIC EOI register */
    movl    $0, (%rax)
    pop     %rax
    iretq

/* Virtio device interrupts (every device's IOAPIC pin uses this vector):
   count, EOI, return.  Ring 3 polls the drivers; the count only tells it
   that something happened (and lets `ds hlt` below skip a stale sleep). */
    .globl device_irq_handler
device_irq_handler:
    push    %rax
    incq    {device_irqs}(%rip)                 /* only the BSP takes these */
    mov     $0xfee000b0, %eax                   /* LAPIC EOI register */
    movl    $0, (%rax)
    pop     %rax
    iretq

/* Spurious LAPIC interrupt: no EOI. */
    .globl spurious_handler
spurious_handler:
    iretq

/*
 * #GP: trap-and-emulate the privileged one-byte instructions ring 3 uses.
 * Under PVM guest ring 3 cannot do port I/O whatever IOPL says, and HLT is
 * privileged everywhere, so ring 3 simply executes them and lands here:
 *   EE        out %al, %dx
 *   EC        in  %dx, %al
 *   F4        hlt  (STI's one-instruction shadow makes STI;HLT atomic, so no
 *                  wake-up is lost; the interrupt runs on this stack and
 *                  returns after the HLT)
 *   3E F4     ds hlt: hlt unless a device interrupt came since ring 3
 *             read the count it passes in RAX (no lost wake-up between
 *             ring 3's last poll and the HLT; see sys::wait_for_device_irq)
 *   F3 6E     rep outsb   (serial output, a line per fault)
 * Anything else is a real #GP.  Only RSI is borrowed, and restored.
 */
    .globl gp_handler
gp_handler:
    push    %rsi
    mov     16(%rsp), %rsi                      /* faulting RIP (8: error code) */
    cmpb    $0xf4, (%rsi)
    je      gp_hlt
    cmpw    $0xf43e, (%rsi)
    je      gp_hlt_if_quiet
    cmpb    $0xee, (%rsi)
    je      gp_out
    cmpb    $0xec, (%rsi)
    je      gp_in
    cmpw    $0x6ef3, (%rsi)
    je      gp_rep_outsb
    pop     %rsi
    pushq   $13
    jmp     exception_common
gp_hlt:
    sti
    hlt
    jmp     gp_done1
gp_hlt_if_quiet:
    cmp     {device_irqs}(%rip), %rax           /* IF is clear: no race */
    jne     1f
    sti
    hlt
1:  addq    $2, 16(%rsp)
    pop     %rsi
    add     $8, %rsp
    iretq
gp_out:
    out     %al, %dx
    jmp     gp_done1
gp_in:
    in      %dx, %al
gp_done1:
    incq    16(%rsp)                            /* skip the instruction */
    pop     %rsi
    add     $8, %rsp                            /* error code */
    iretq
gp_rep_outsb:
    pop     %rsi                                /* ring 3's RSI: the source */
    push    %rax
1:  test    %rcx, %rcx
    jz      2f
    lodsb
    out     %al, %dx
    dec     %rcx
    jmp     1b
2:  pop     %rax
    addq    $2, 8(%rsp)
    add     $8, %rsp
    iretq

/* Exception stubs, 16 bytes each: exception_stubs + 16 * vector.  They push a
   dummy error code where the CPU pushes none, then the vector. */
    .balign 16
    .globl exception_stubs
exception_stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq   $0
    .endif
    pushq   $\vec
    jmp     exception_common
    .endr

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS.  Print
   "tandem-guest: exception <vec> rip=<hex> cpu=<i>" and a detail line, then
   halt this CPU.  No lock: the CPU is dying and must not wait on ring 3. */
exception_common:
    mov     %rsp, %rbx
    and     $~({CPU_BLOCK_SIZE} - 1), %rbx
    lea     msg_exception(%rip), %rsi
    call    serial_puts
    mov     0(%rsp), %rax
    call    serial_put_dec
    lea     msg_rip(%rip), %rsi
    call    serial_puts
    mov     16(%rsp), %rax
    call    serial_put_hex
    lea     msg_cpu(%rip), %rsi
    call    serial_puts
    mov     {CPU_INDEX}(%rbx), %rax
    call    serial_put_dec
    lea     msg_err(%rip), %rsi
    call    serial_puts
    mov     8(%rsp), %rax
    call    serial_put_hex
    lea     msg_cr2(%rip), %rsi
    call    serial_puts
    mov     %cr2, %rax
    call    serial_put_hex
    lea     msg_cs(%rip), %rsi
    call    serial_puts
    mov     24(%rsp), %rax
    call    serial_put_hex
    lea     msg_rsp(%rip), %rsi
    call    serial_puts
    mov     40(%rsp), %rax
    call    serial_put_hex
    mov     $10, %eax           /* newline */
    call    serial_putc
    cli
2:  hlt
    jmp     2b

/* COM1 output for ring 0.  serial_putc: AL = byte (clobbers RAX, RCX, RDX). */
serial_putc:
    mov     %eax, %ecx
1:  mov     $0x3fd, %dx
    in      %dx, %al
    test    $0x20, %al
    jz      1b
    mov     $0x3f8, %dx
    mov     %ecx, %eax
    out     %al, %dx
    ret

/* RSI = NUL-terminated string. */
serial_puts:
1:  movzbl  (%rsi), %eax
    test    %al, %al
    jz      2f
    call    serial_putc
    inc     %rsi
    jmp     1b
2:  ret

/* RAX as 0x + 16 hex digits. */
serial_put_hex:
    mov     %rax, %r8
    mov     $48, %eax           /* '0' */
    call    serial_putc
    mov     $120, %eax          /* 'x' */
    call    serial_putc
    mov     $16, %r9d
1:  rol     $4, %r8
    mov     %r8d, %eax
    and     $0xf, %eax
    lea     hex_digits(%rip), %rdx
    movzbl  (%rdx,%rax), %eax
    call    serial_putc
    dec     %r9d
    jnz     1b
    ret

/* RAX in decimal. */
serial_put_dec:
    mov     %rsp, %r9                           /* digits go just below here */
    sub     $32, %rsp
    mov     %r9, %rsi
    mov     $10, %r8d
1:  xor     %edx, %edx
    div     %r8
    add     $48, %dl
    dec     %rsi
    mov     %dl, (%rsi)
    test    %rax, %rax
    jnz     1b
2:  movzbl  (%rsi), %eax
    call    serial_putc
    inc     %rsi
    cmp     %r9, %rsi
    jb      2b
    add     $32, %rsp
    ret

    .section .rodata.interrupts, "a"
hex_digits:     .ascii "0123456789abcdef"
msg_exception:  .asciz "tandem-guest: exception "
msg_rip:        .asciz " rip="
msg_cpu:        .asciz " cpu="
msg_err:        .asciz "\ntandem-guest: exception detail: err="
msg_cr2:        .asciz " cr2="
msg_cs:         .asciz " cs="
msg_rsp:        .asciz " rsp="
